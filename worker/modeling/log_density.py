"""Each row's log likelihood, and its predictive CDF, under each posterior draw, in numpy.

Bambi's ``family.log_likelihood`` builds and compiles a PyTensor graph (``pm.logp``) for
every call: on chunks of rows that compilation took more time than the arithmetic. The
families the service fits have closed-form densities in PyMC's parameterization, written
here for arrays of (chain, draw, row) parameters; a test checks each against Bambi's own
``log_likelihood``. Families without one here (the ordinal ``cumulative``) go through Bambi.

    gaussian          log N(y | mu, sigma)
    t                 log StudentT(y | nu, mu, sigma)
    bernoulli         y log p + (1 - y) log(1 - p)
    binomial          log C(n, y) + y log p + (n - y) log(1 - p)
    poisson           y log mu - mu - log y!
    negativebinomial  log Gamma(y + a) - log Gamma(a) - log y! + a log(a / (mu + a))
                      + y log(mu / (mu + a))                       (a = alpha)
    gamma             a log b - log Gamma(a) + (a - 1) log y - b y  (a = alpha, b = alpha/mu)
    beta              (a - 1) log y + (b - 1) log(1 - y) - log B(a, b)
                                                        (a = mu kappa, b = (1 - mu) kappa)

The CDFs (``cdf_bounds``) give the LOO-PIT its values without drawing replicated data:
``P(y_rep < y)`` and ``P(y_rep <= y)`` per draw (equal for continuous families), from
scipy's regularized functions (``ndtr``, ``stdtr``, ``bdtr``, ``pdtr``, ``betainc``,
``gammainc``).
"""

from __future__ import annotations

from collections.abc import Callable

import bambi as bmb
import numpy as np
import pandas as pd
import pytensor
import xarray as xr
from bambi.utils import response_evaluate_new_data
from scipy import special

from worker.modeling.prediction import OBS
from worker.modeling.summaries import SAMPLE_DIMS

Params = dict[str, np.ndarray]
_HALF_LOG_2PI = 0.5 * np.log(2 * np.pi)


def _gaussian(y: np.ndarray, p: Params) -> np.ndarray:
    z = (y - p["mu"]) / p["sigma"]
    return np.asarray(-_HALF_LOG_2PI - np.log(p["sigma"]) - 0.5 * z * z)


def _student_t(y: np.ndarray, p: Params) -> np.ndarray:
    nu, sigma = p["nu"], p["sigma"]
    z = (y - p["mu"]) / sigma
    return np.asarray(
        special.gammaln((nu + 1) / 2)
        - special.gammaln(nu / 2)
        - 0.5 * np.log(nu * np.pi)
        - np.log(sigma)
        - (nu + 1) / 2 * np.log1p(z * z / nu)
    )


def _bernoulli(y: np.ndarray, p: Params) -> np.ndarray:
    return np.asarray(special.xlogy(y, p["p"]) + special.xlog1py(1 - y, -p["p"]))


def _binomial(y: np.ndarray, p: Params) -> np.ndarray:
    n = p["n"]
    log_choose = special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
    return np.asarray(log_choose + special.xlogy(y, p["p"]) + special.xlog1py(n - y, -p["p"]))


def _poisson(y: np.ndarray, p: Params) -> np.ndarray:
    return np.asarray(special.xlogy(y, p["mu"]) - p["mu"] - special.gammaln(y + 1))


def _negative_binomial(y: np.ndarray, p: Params) -> np.ndarray:
    mu, alpha = p["mu"], p["alpha"]
    return np.asarray(
        special.gammaln(y + alpha)
        - special.gammaln(alpha)
        - special.gammaln(y + 1)
        + alpha * np.log(alpha / (mu + alpha))
        + special.xlogy(y, mu / (mu + alpha))
    )


def _gamma(y: np.ndarray, p: Params) -> np.ndarray:
    alpha = p["alpha"]
    rate = alpha / p["mu"]
    return np.asarray(
        alpha * np.log(rate) - special.gammaln(alpha) + (alpha - 1) * np.log(y) - rate * y
    )


def _beta(y: np.ndarray, p: Params) -> np.ndarray:
    a = p["mu"] * p["kappa"]
    b = (1 - p["mu"]) * p["kappa"]
    return np.asarray((a - 1) * np.log(y) + (b - 1) * np.log1p(-y) - special.betaln(a, b))


DENSITIES: dict[str, Callable[[np.ndarray, Params], np.ndarray]] = {
    "gaussian": _gaussian,
    "t": _student_t,
    "bernoulli": _bernoulli,
    "binomial": _binomial,
    "poisson": _poisson,
    "negativebinomial": _negative_binomial,
    "gamma": _gamma,
    "beta": _beta,
}


Bounds = tuple[np.ndarray, np.ndarray]


def _below(y: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> Bounds:
    """``(F(y - 1), F(y))`` of a distribution on the integers (F(-1) = 0)."""
    upper = cdf(y)
    lower = np.where(y >= 1, cdf(np.maximum(y - 1, 0)), 0.0)
    return np.asarray(lower), np.asarray(upper)


def _continuous(values: np.ndarray) -> Bounds:
    return values, values


CDFS: dict[str, Callable[[np.ndarray, Params], Bounds]] = {
    "gaussian": lambda y, p: _continuous(special.ndtr((y - p["mu"]) / p["sigma"])),
    "t": lambda y, p: _continuous(special.stdtr(p["nu"], (y - p["mu"]) / p["sigma"])),
    "bernoulli": lambda y, p: (
        np.where(y >= 1, 1 - p["p"], 0.0),
        np.where(y >= 1, 1.0, 1 - p["p"]),
    ),
    "binomial": lambda y, p: _below(y, lambda k: special.bdtr(k, p["n"], p["p"])),
    "poisson": lambda y, p: _below(y, lambda k: special.pdtr(k, p["mu"])),
    "negativebinomial": lambda y, p: _below(
        y, lambda k: special.betainc(p["alpha"], k + 1, p["alpha"] / (p["mu"] + p["alpha"]))
    ),
    "gamma": lambda y, p: _continuous(special.gammainc(p["alpha"], p["alpha"] / p["mu"] * y)),
    "beta": lambda y, p: _continuous(
        special.betainc(p["mu"] * p["kappa"], (1 - p["mu"]) * p["kappa"], y)
    ),
}


def _observed(
    model: bmb.Model, extended: xr.Dataset, data: pd.DataFrame, family: str
) -> tuple[np.ndarray, Params]:
    """The rows' responses and their distribution parameters (chain, draw, row)."""
    observed = np.asarray(response_evaluate_new_data(model, data), dtype=float)
    params: Params = {}
    for name in model.family.likelihood.params:
        component = model.parameters[name]
        values = extended[component.alias or name]
        values = values.transpose(*SAMPLE_DIMS, *(d for d in values.dims if d == OBS))
        params[name] = values.values if OBS in values.dims else values.values[..., None]
    if family == "binomial":
        params["n"] = observed[:, 1]
        observed = observed[:, 0]
    return observed.reshape(-1), params


def log_likelihood(
    model: bmb.Model, extended: xr.Dataset, data: pd.DataFrame, family: str
) -> np.ndarray:
    """Draws (chain, draw, row) of each row's log likelihood, from ``extended``: the
    posterior with the distribution parameters on ``data``'s rows (``fitted_parameters``)."""
    density = DENSITIES.get(family)
    if density is None:
        return _through_bambi(model, extended, data)
    observed, params = _observed(model, extended, data, family)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return density(observed, params)


def likelihood_and_cdf(
    model: bmb.Model, extended: xr.Dataset, data: pd.DataFrame, family: str
) -> tuple[np.ndarray, Bounds | None]:
    """Each row's log likelihood (chain, draw, row) and, where the family has a CDF here,
    ``(P(y_rep < y), P(y_rep <= y))`` per draw; None for the others (``cumulative``)."""
    cdf = CDFS.get(family)
    if cdf is None or family not in DENSITIES:
        return log_likelihood(model, extended, data, family), None
    observed, params = _observed(model, extended, data, family)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return DENSITIES[family](observed, params), cdf(observed, params)


def _through_bambi(model: bmb.Model, extended: xr.Dataset, data: pd.DataFrame) -> np.ndarray:
    # Bambi evaluates pm.logp through a PyTensor function compiled for the call: the Python
    # implementation compiles in milliseconds, the default (numba) in most of a second.
    with pytensor.config.change_flags(mode="FAST_COMPILE"):  # type: ignore[attr-defined]
        values: xr.DataArray = model.family.log_likelihood(model, extended, data=data)
    return values.transpose(*SAMPLE_DIMS, OBS).values
