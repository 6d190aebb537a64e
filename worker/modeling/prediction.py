"""Predictions for new rows, with independent draws for every new group level.

Bambi (and rstanarm) give all new levels of a factor one shared set of draws. Here each new
level of each group-level term gets its own draws from the fitted population distribution,
``b_new ~ Normal(mu, sigma)`` with ``(mu, sigma)`` taken draw by draw from the posterior
(brms' ``sample_new_levels = "gaussian"``), so two new schools are two different schools.
"""

from __future__ import annotations

from typing import Any

import bambi as bmb
import formulae as fm
import numpy as np
import pandas as pd
import pytensor
import xarray as xr
from bambi.utils import get_aliased_name

from service.core.errors import InvalidRequest
from service.core.schemas import IntervalKind
from worker.modeling import mcmc_stats
from worker.modeling.summaries import SAMPLE_DIMS, interval

OBS = "__obs__"


def predict(
    model: bmb.Model,
    posterior: xr.Dataset,
    data: pd.DataFrame,
    *,
    kind: str,
    interval_kind: IntervalKind,
    prob: float,
    seed: int | None,
    labels: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Per-row mean, sd and interval of the expected value (``mean``) or of new responses.

    ``labels`` holds the rows' group labels as sent (before categorical coding, which turns
    levels it does not know into missing values); new levels are told apart by them.
    """
    rng = np.random.default_rng(seed)
    n = len(data)
    status: dict[str, np.ndarray] = {}
    params: dict[str, xr.DataArray] = {}
    for name, component in model.conditional_parameters.items():
        eta = _linear_predictor(component, posterior, data, rng, status, labels)
        params[component.alias or name] = _response_scale(model, name, eta, posterior)
    extended = posterior.assign({k: v for k, v in params.items()}).assign_coords(
        {OBS: np.arange(n)}
    )
    parent = model.family.likelihood.parent
    if kind == "mean":
        values = extended[parent]
    else:
        # Bambi evaluates the whole response term on the new data (``p(y, n)`` needs ``y``):
        # a placeholder fills response columns that new rows cannot have.
        placeholders = {v: 0 for v in model.response_term.term.var_names if v not in data}
        # Bambi draws through a PyTensor function compiled for this call; with the default
        # (numba) mode that compilation alone takes most of a second, while the Python
        # implementations of the random variables are numpy calls that draw just as fast.
        with pytensor.config.change_flags(mode="FAST_COMPILE"):  # type: ignore[attr-defined]
            values = model.family.posterior_predictive(
                model, extended, random_seed=rng, data=data.assign(**placeholders)
            )
    extra = [d for d in values.dims if d not in (*SAMPLE_DIMS, OBS)]
    if extra:  # ordinal: category probabilities -> expected category position (0-based)
        (category,) = extra
        positions = xr.DataArray(np.arange(values.sizes[category]), dims=(category,))
        values = (values * positions).sum(category)
    draws = values.transpose(*SAMPLE_DIMS, OBS).values
    lower, upper = interval(draws, interval_kind, prob)
    mean, sd = mcmc_stats.mean(draws), mcmc_stats.sd(draws)
    rows = [
        {
            "row": i,
            "mean": float(mean[i]),
            "sd": float(sd[i]),
            "lower": float(lower[i]),
            "upper": float(upper[i]),
            "groups": {f: ("new" if new[i] else "seen") for f, new in status.items()},
        }
        for i in range(n)
    ]
    return {"kind": kind, "interval": {"kind": interval_kind, "prob": prob}, "rows": rows}


def _response_scale(
    model: bmb.Model, name: str, eta: xr.DataArray, posterior: xr.Dataset
) -> xr.DataArray:
    """Apply the family's inverse link and special cases, as Bambi's own predict does."""
    family = model.family
    if hasattr(family, "transform_linear_predictor"):
        eta = family.transform_linear_predictor(model, eta, posterior)
    linkinv = family.link[name].linkinv
    kwargs = getattr(family, "INVLINK_KWARGS", {})
    values: xr.DataArray = xr.apply_ufunc(linkinv, eta, kwargs=kwargs)
    if hasattr(family, "transform_coords"):
        values = family.transform_coords(model, values)
    if hasattr(family, "transform_mean"):
        values = family.transform_mean(model, values)
    return values


def _linear_predictor(
    component: Any,
    posterior: xr.Dataset,
    data: pd.DataFrame,
    rng: np.random.Generator,
    status: dict[str, np.ndarray],
    labels: pd.DataFrame | None,
) -> xr.DataArray:
    n = len(data)
    shape = (posterior.sizes["chain"], posterior.sizes["draw"], n)
    eta = xr.DataArray(np.zeros(shape), dims=(*SAMPLE_DIMS, OBS))
    if component.design.common:
        try:
            common = component.predict_common(
                posterior, data, False, SAMPLE_DIMS, (OBS, "__variables__"), {}
            )
        except Exception as exc:
            raise InvalidRequest.one(
                "data", "the new data does not fit the model's predictors (unseen category?)"
            ) from exc
        if not isinstance(common, xr.DataArray):  # offsets only: one value per row
            common = xr.DataArray(np.asarray(common, dtype=float).reshape(n), dims=(OBS,))
        eta = eta + common
    for term in component.group_specific_terms.values():
        contribution, factor, new = _group_term(term, posterior, data, rng, labels)
        eta = eta + xr.DataArray(contribution, dims=(*SAMPLE_DIMS, OBS))
        status[factor] = status.get(factor, np.zeros(n, dtype=bool)) | new
    return eta


def _group_term(
    term: Any,
    posterior: xr.Dataset,
    data: pd.DataFrame,
    rng: np.random.Generator,
    labels: pd.DataFrame | None,
) -> tuple[np.ndarray, str, np.ndarray]:
    """Contribution of one group-level term, drawing each new level independently."""
    name = get_aliased_name(term)
    factor = term.name.split("|", 1)[1]
    formula_term = term.term
    previous = fm.config["EVAL_UNSEEN_CATEGORIES"]
    fm.config["EVAL_UNSEEN_CATEGORIES"] = "silent"
    try:
        x = np.asarray(formula_term.expr.eval_new_data(data), dtype=float)
        membership = np.asarray(formula_term.factor.eval_new_data(data))
    except Exception as exc:
        raise InvalidRequest.one(
            "data", f"the new data does not fit the group term '{name}'"
        ) from exc
    finally:
        fm.config["EVAL_UNSEEN_CATEGORIES"] = previous
    if x.ndim == 1:
        x = x[:, None]
    if membership.ndim == 1:
        membership = membership[:, None]
    seen = membership.any(axis=1)
    index = membership.argmax(axis=1)

    draws = posterior[name]
    factor_dim = next(d for d in draws.dims if str(d).endswith("__factor_dim"))
    expr_dims = [d for d in draws.dims if d not in (*SAMPLE_DIMS, factor_dim)]
    b = draws.transpose(*SAMPLE_DIMS, factor_dim, *expr_dims).values
    if b.ndim == 3:
        b = b[..., None]  # (chain, draw, level, k)
    chains, n_draws, _, k = b.shape

    new_rows = np.flatnonzero(~seen)
    per_row = np.empty((chains, n_draws, len(data), k))
    per_row[:, :, seen] = b[:, :, index[seen]]
    if new_rows.size:
        columns = sorted(formula_term.factor.var_names)
        source = labels if labels is not None else data
        keys = [tuple(source[c].iloc[i] for c in columns) for i in new_rows]
        unique = {key: j for j, key in enumerate(dict.fromkeys(keys))}
        fresh = _population_draws(term, posterior, len(unique), k, rng)  # (c, d, new, k)
        per_row[:, :, new_rows] = fresh[:, :, [unique[key] for key in keys]]
    contribution = np.einsum("cdnk,nk->cdn", per_row, x)
    return contribution, factor, ~seen


def _population_draws(
    term: Any, posterior: xr.Dataset, levels: int, k: int, rng: np.random.Generator
) -> np.ndarray:
    """``levels`` independent new-level effects per posterior draw, from the population."""
    name = get_aliased_name(term)
    prior = term.prior
    if prior.name != "Normal":
        raise InvalidRequest.one(
            "data", f"new levels cannot be predicted for '{name}' with a {prior.name} prior"
        )
    chains, draws = posterior.sizes["chain"], posterior.sizes["draw"]

    def hyper(arg: str) -> np.ndarray:
        value = prior.args[arg]
        if isinstance(value, bmb.Prior):
            array = posterior[f"{name}_{arg}"].transpose(*SAMPLE_DIMS, ...).values
        else:
            array = np.broadcast_to(np.asarray(value, dtype=float), (chains, draws))
        array = array.reshape(chains, draws, -1)
        return np.broadcast_to(array, (chains, draws, k))[:, :, None, :]

    standard = rng.standard_normal((chains, draws, levels, k))
    return hyper("mu") + hyper("sigma") * standard
