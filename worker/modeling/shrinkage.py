"""Shrinkage per group: each level's own (no-pooling) estimate beside the partially pooled one.

Gaussian models with identity link and a scalar sigma. For row ``i`` in level ``j`` of a
grouping factor, the mean is

    mu_i = offset_i + x_i . beta + z_i . b_j + (the other factors' effects)_i

where ``z_i`` holds the predictors of *all* the factor's group terms (``(x | g)`` is the
columns ``1`` and ``x``), ``b_j = beta_z + u_j`` the level's total coefficients (``coef``:
the fixed counterparts ``beta_z``, Intercept and ``x``, plus the deviations ``u_j``), and
``x_i . beta`` the common terms with no counterpart among the factor's group terms.

No pooling. The level's own least squares of the partial residual
``r_i = y_i - offset_i - x_i . beta_hat - (the other factors' z . u_hat)_i`` on its rows:

    b_j^np = (Z_j'Z_j)^-1 Z_j'r_j,      se_jk = sigma_hat sqrt([(Z_j'Z_j)^-1]_kk)

(hats are posterior means). The coefficients of a level are fitted jointly: its own slope
comes with its own intercept, as in ``lm(y ~ x)`` on the level's rows. For ``(1 | g)``
with no other predictor, ``r = y``: ``b_j^np`` is the level's mean and ``se_j =
sigma_hat / sqrt(n_j)``. Undefined (null) where ``Z_j`` is rank-deficient: fewer rows than
columns, a slope whose predictor is constant within the level, a category the level lacks
(numerically: the smallest eigenvalue of ``Z_j'Z_j`` scaled to unit diagonal is below
:data:`RANK_TOLERANCE`).

Pooling factor. Given ``sigma``, the group SD ``tau`` and everything else, the conditional
posterior mean of a group intercept is ``(1 - w_j) ybar_j + w_j mu`` with

    w_j = se_j^2 / (se_j^2 + tau^2),      se_j^2 = sigma^2 / n_j,

the weight of the population mean: 0 = the level's own estimate, 1 = the population's.
``omega_j`` is its posterior mean, computed draw by draw (``sigma`` and ``tau`` of the same
draw). It lies in [0, 1] and grows as ``n_j`` shrinks. For the ``k``-th coefficient of a
level with several, ``se_jk^2 = sigma^2 [(Z_j'Z_j)^-1]_kk`` and ``tau_k`` the term's SD:
the diagonal only, a normal approximation that is exact when the level's columns are
orthogonal. Null where the no-pooling se is.

Bernoulli and binomial with logit link, intercept-only (``y ~ (1 | g)``, no other term or
offset): the level's own estimate is the logit of its proportion of successes, ``logit(k_j /
n_j)``, with the delta-method se ``sqrt(1/k_j + 1/(n_j - k_j))`` (the Wald normal
approximation on the link scale), and ``omega_j`` the posterior mean over ``tau`` of
``se_j^2 / (se_j^2 + tau^2)``. Null for a level with all or no successes (its logit is
infinite). Every other model (other families or links, distributional formulas, weights,
censoring, truncation, smooth terms, other components' group terms) gets nulls.

Cost: sums over rows with ``np.bincount`` (memory of the order of rows x columns), one
small solve per level, and the pooling factors in blocks of levels of at most
:data:`BLOCK_VALUES` values (draws x levels x columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bambi as bmb
import numpy as np
import xarray as xr
from bambi.utils import get_aliased_name

SAMPLE_DIMS = ("chain", "draw")
#: Smallest eigenvalue of a level's ``Z_j'Z_j`` scaled to unit diagonal for which its own
#: least squares are defined (a condition number of ``Z_j`` up to about 1e5).
RANK_TOLERANCE = 1e-10
#: Values (draws x levels x columns) in one block of the pooling factors' computation.
BLOCK_VALUES = 2**20


@dataclass(frozen=True)
class TermShrinkage:
    """One group term's shrinkage, shaped (levels, columns); NaN where undefined.

    Levels follow the term's ``groups``; columns its predictor's columns (one for a numeric
    expression, one per category for a categorical one).
    """

    estimate: np.ndarray
    se: np.ndarray
    pooling: np.ndarray


def shrinkage(model: bmb.Model, posterior: xr.Dataset) -> dict[str, TermShrinkage]:
    """The shrinkage of every group term that has it, by the term's (aliased) name."""
    response = model.response_term
    if any(getattr(response, a) for a in ("is_weighted", "is_censored", "is_truncated")):
        return {}
    if len(model.conditional_parameters) > 1:  # distributional formulas
        return {}
    component = model.parameters[model.family.likelihood.parent]
    if getattr(component, "hsgp_terms", None):
        return {}
    link = model.family.link[model.family.likelihood.parent].name
    if model.family.name == "gaussian" and link == "identity":
        return _gaussian(model, component, posterior)
    if model.family.name in ("bernoulli", "binomial") and link == "logit":
        return _logit_intercept_only(model, component, posterior)
    return {}


def _gaussian(model: bmb.Model, component: Any, posterior: xr.Dataset) -> dict[str, TermShrinkage]:
    """Every factor's own least squares on its partial residual (see the module's text)."""
    if "sigma" not in posterior or set(posterior["sigma"].dims) - set(SAMPLE_DIMS):
        return {}
    y = np.asarray(model.response_term.data, dtype=float)
    if y.ndim != 1:
        return {}
    n = len(y)
    fitted = _common_parts(component, posterior, n)
    terms = component.group_specific_terms
    effects = {name: _group_part(term, posterior, n) for name, term in terms.items()}
    base = y - sum(fitted.values(), np.zeros(n)) - sum(effects.values(), np.zeros(n))
    for term in component.offset_terms.values():
        base = base - np.asarray(term.data, dtype=float).reshape(n)
    sigma = posterior["sigma"].values.reshape(-1)
    result: dict[str, TermShrinkage] = {}
    for names in component.group_specific_groups.values():
        factor_terms = [terms[name] for name in names]
        counterparts = _counterparts(component, factor_terms)
        if counterparts is None:
            continue
        # Put back the factor's own effects and the fixed parts they deviate from.
        residual = base + sum((effects[name] for name in names), np.zeros(n))
        residual = residual + sum((fitted[c] for c in counterparts), np.zeros(n))
        result.update(_least_squares(factor_terms, residual, sigma, posterior))
    return result


def _common_parts(component: Any, posterior: xr.Dataset, n: int) -> dict[str, np.ndarray]:
    """Each common term's part of the linear predictor at the posterior mean, by name."""
    parts: dict[str, np.ndarray] = {}
    if component.intercept_term is not None:
        name = get_aliased_name(component.intercept_term)
        parts["1"] = np.full(n, float(posterior[name].mean()))
    for key, term in component.common_terms.items():
        x = np.asarray(term.data, dtype=float).reshape(n, -1)
        beta = posterior[get_aliased_name(term)].mean(SAMPLE_DIMS).values.reshape(-1)
        parts[key] = x @ beta
    return parts


def _group_part(term: Any, posterior: xr.Dataset, n: int) -> np.ndarray:
    """A group term's part of the linear predictor at the posterior mean of its effects."""
    z = _predictor(term, n)
    u = _by_level(posterior[get_aliased_name(term)].mean(SAMPLE_DIMS))
    return np.asarray((z * u[np.asarray(term.group_index)]).sum(axis=1))


def _counterparts(component: Any, factor_terms: list[Any]) -> list[str] | None:
    """The common terms the factor's group terms deviate from (``"1"``: the intercept);
    None when one has the same name but another coding (no level-by-level comparison)."""
    found: list[str] = []
    for term in factor_terms:
        expr = term.name.split("|")[0]
        if expr == "1" and component.intercept_term is not None:
            found.append("1")
        elif expr in component.common_terms:
            common = component.common_terms[expr]
            width = np.asarray(common.data).reshape(len(common.data), -1).shape[1]
            if width != _predictor(term, len(common.data)).shape[1]:
                return None
            found.append(expr)
    return found


def _least_squares(
    terms: list[Any], residual: np.ndarray, sigma: np.ndarray, posterior: xr.Dataset
) -> dict[str, TermShrinkage]:
    """Each level's own least squares of ``residual`` on the factor's group predictors."""
    n = len(residual)
    level = np.asarray(terms[0].group_index)
    levels = len(terms[0].groups)
    blocks = [_predictor(term, n) for term in terms]
    z = np.hstack(blocks)
    e = z.shape[1]

    def per_level(weights: np.ndarray) -> np.ndarray:
        return np.bincount(level, weights=weights, minlength=levels).astype(float)

    zz = np.empty((levels, e, e))
    for i in range(e):
        for k in range(i, e):
            zz[:, i, k] = zz[:, k, i] = per_level(z[:, i] * z[:, k])
    zr = np.stack([per_level(z[:, i] * residual) for i in range(e)], axis=1)
    inverse = _inverses(zz)
    estimate = np.einsum("lik,lk->li", inverse, zr)
    variance = np.diagonal(inverse, axis1=1, axis2=2)  # (levels, e), per unit sigma^2
    tau = np.hstack(
        [
            _group_sd(term, posterior, block.shape[1])
            for term, block in zip(terms, blocks, strict=True)
        ]
    )
    pooling = pooling_factors(sigma**2, variance, tau**2)
    se = float(sigma.mean()) * np.sqrt(variance)
    bounds = np.cumsum([0, *(block.shape[1] for block in blocks)])
    return {
        get_aliased_name(term): TermShrinkage(estimate[:, lo:hi], se[:, lo:hi], pooling[:, lo:hi])
        for term, lo, hi in zip(terms, bounds[:-1], bounds[1:], strict=True)
    }


def _inverses(zz: np.ndarray) -> np.ndarray:
    """``(Z_j'Z_j)^-1`` of every level, NaN where it is (numerically) singular."""
    inverse = np.full_like(zz, np.nan)
    scale = np.sqrt(np.diagonal(zz, axis1=1, axis2=2))  # (levels, e)
    nonzero = (scale > 0).all(axis=1)
    outer = scale[nonzero, :, None] * scale[nonzero, None, :]
    scaled = zz[nonzero] / outer  # unit diagonal: the columns' cosines within the level
    full_rank = np.linalg.eigvalsh(scaled)[:, 0] > RANK_TOLERANCE
    inverse[np.flatnonzero(nonzero)[full_rank]] = (
        np.linalg.inv(scaled[full_rank]) / outer[full_rank]
    )
    return inverse


def pooling_factors(noise: np.ndarray, variance: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    """``mean_s se2 / (se2 + tau2_s)`` with ``se2 = noise_s * variance``: (levels, e).

    ``noise`` (draws,) is sigma^2 per draw (ones for a fixed se), ``variance`` (levels, e)
    the per-level variance per unit of it, ``tau2`` (draws, e) the group variance per draw.
    Levels are taken in blocks so that no array exceeds :data:`BLOCK_VALUES` values.
    """
    levels, e = variance.shape
    out = np.empty((levels, e))
    step = max(1, BLOCK_VALUES // max(1, len(noise) * e))
    for lo in range(0, levels, step):
        se2 = noise[:, None, None] * variance[None, lo : lo + step]  # (draws, block, e)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo : lo + step] = (se2 / (se2 + tau2[:, None, :])).mean(axis=0)
    return out


def _group_sd(term: Any, posterior: xr.Dataset, width: int) -> np.ndarray:
    """The term's group SD per draw and column, (draws, width); NaN when not sampled."""
    name = f"{get_aliased_name(term)}_sigma"
    draws = posterior.sizes["chain"] * posterior.sizes["draw"]
    if name not in posterior:
        return np.full((draws, width), np.nan)
    values = posterior[name].transpose(*SAMPLE_DIMS, ...).values.reshape(draws, -1)
    return np.broadcast_to(values, (draws, width)).astype(float)


def _logit_intercept_only(
    model: bmb.Model, component: Any, posterior: xr.Dataset
) -> dict[str, TermShrinkage]:
    """The logit of each level's proportion, for ``y ~ (1 | g)`` and nothing else."""
    terms = list(component.group_specific_terms.values())
    plain = (
        component.intercept_term is not None
        and not component.common_terms
        and not component.offset_terms
        and len(terms) == 1
        and terms[0].name.split("|")[0] == "1"
    )
    if not plain:
        return {}
    (term,) = terms
    data = np.asarray(model.response_term.data, dtype=float)
    successes, trials = (data, np.ones_like(data)) if data.ndim == 1 else (data[:, 0], data[:, 1])
    level = np.asarray(term.group_index)
    k = np.bincount(level, weights=successes, minlength=len(term.groups))
    n = np.bincount(level, weights=trials, minlength=len(term.groups))
    defined = (k > 0) & (k < n)
    k, failures = np.where(defined, k, np.nan), np.where(defined, n - k, np.nan)
    estimate = np.log(k / failures)[:, None]
    variance = (1 / k + 1 / failures)[:, None]
    tau = _group_sd(term, posterior, 1)
    pooling = pooling_factors(np.ones(len(tau)), variance, tau**2)
    return {get_aliased_name(term): TermShrinkage(estimate, np.sqrt(variance), pooling)}


def _predictor(term: Any, n: int) -> np.ndarray:
    """A group term's predictor columns, (rows, columns)."""
    return np.asarray(term.predictor, dtype=float).reshape(n, -1)


def _by_level(values: xr.DataArray) -> np.ndarray:
    """A group term's per-level values as (levels, columns)."""
    factor_dim = next(d for d in values.dims if str(d).endswith("__factor_dim"))
    ordered = values.transpose(factor_dim, ...)
    return np.asarray(ordered.values).reshape(ordered.shape[0], -1)
