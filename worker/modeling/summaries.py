"""Posterior summaries, group effects and convergence diagnostics.

Parameters are classified from the Bambi model: ``fixed`` (common terms of every
distributional parameter), ``group_sd`` (the SD hyperparameter of a group-level term),
``group_corr`` (the correlation of two terms of one parenthesised group term, as
``1|g:x|g_corr``, see ``correlated``), ``auxiliary`` (family parameters such as a gaussian's
``sigma``).
Per-level group effects are served by the groups resource, not the summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import bambi as bmb
import numpy as np
import xarray as xr
from bambi.utils import get_aliased_name

from service.core.group_blocks import correlation_name
from service.core.schemas import (
    DEFAULT_PROB,
    Diagnostics,
    Estimate,
    GroupEffects,
    GroupLevel,
    Interval,
    IntervalKind,
    LevelEffect,
    NoPooling,
    ParameterDiagnostics,
    ParameterSummary,
    Summary,
    Verdict,
)
from worker.modeling import mcmc_stats
from worker.modeling.building import correlations_of
from worker.modeling.shrinkage import TermShrinkage, shrinkage

SAMPLE_DIMS = ("chain", "draw")
DEFAULT_INTERVAL: tuple[IntervalKind, float] = ("hdi", DEFAULT_PROB)

# Vehtari et al. (2021): R-hat below 1.01 and at least 100 effective draws per chain.
RHAT_GOOD = 1.01
RHAT_BAD = 1.05
ESS_PER_CHAIN_GOOD = 100
ESS_PER_CHAIN_BAD = 50
EBFMI_GOOD = 0.3


@dataclass(frozen=True)
class ParameterRole:
    """What a posterior variable is in the model."""

    kind: str  # fixed | group_sd | group_corr | auxiliary
    term: str


def parameter_roles(model: bmb.Model) -> dict[str, ParameterRole]:
    """Every summarised posterior variable and its role, in a stable, readable order."""
    roles: dict[str, ParameterRole] = {}
    for component in model.conditional_parameters.values():
        terms = list(component.common_terms.values())
        if component.intercept_term is not None:
            terms.insert(0, component.intercept_term)
        for term in terms:
            name = get_aliased_name(term)
            roles[name] = ParameterRole("fixed", name)
    for component in model.conditional_parameters.values():
        for term in component.group_specific_terms.values():
            name = get_aliased_name(term)
            for arg, value in term.prior.args.items():
                if isinstance(value, bmb.Prior):
                    kind = "group_sd" if arg == "sigma" else "auxiliary"
                    roles[f"{name}_{arg}"] = ParameterRole(kind, name)
    for block in correlations_of(model).blocks:
        for _, _, name in block.pairs():
            roles[name] = ParameterRole("group_corr", block.name)
    for name in model.marginal_parameters:
        roles[name] = ParameterRole("auxiliary", name)
    return roles


def group_terms(model: bmb.Model) -> dict[str, list[Any]]:
    """Group-level terms by grouping factor, e.g. ``{"school": [<1|school>]}``."""
    factors: dict[str, list[Any]] = {}
    for component in model.conditional_parameters.values():
        for factor, names in component.group_specific_groups.items():
            factors.setdefault(factor, []).extend(component.group_specific_terms[n] for n in names)
    return factors


def interval(draws: np.ndarray, kind: IntervalKind, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """HDI or equal-tailed interval of each column of ``draws`` shaped (chain, draw, k)."""
    if kind == "hdi":
        return mcmc_stats.hdi(draws, prob)
    return mcmc_stats.eti(draws, prob)


def _label(coords: Mapping[Any, Any]) -> str | None:
    return ", ".join(str(v) for v in coords.values()) or None


#: Column statistics by name: each maps draws (chain, draw, k) to k values.
STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": mcmc_stats.mean,
    "sd": mcmc_stats.sd,
    "mcse_mean": mcmc_stats.mcse_mean,
    "mcse_sd": mcmc_stats.mcse_sd,
    "r_hat": mcmc_stats.rhat,
    "ess_bulk": mcmc_stats.ess_bulk,
    "ess_tail": mcmc_stats.ess_tail,
}
ESTIMATE = ("mean", "sd")
SUMMARY = ("mean", "sd", "mcse_mean", "mcse_sd")
DIAGNOSTICS = ("mcse_mean", "r_hat", "ess_bulk", "ess_tail")


def _columns(ds: xr.Dataset) -> tuple[np.ndarray, list[tuple[str, str | None]]]:
    """Every scalar of every variable as one column of a (chain, draw, k) array."""
    blocks: list[np.ndarray] = []
    names: list[tuple[str, str | None]] = []
    for name in ds.data_vars:
        variable = ds[name].transpose(*SAMPLE_DIMS, ...)
        other_dims = variable.dims[2:]
        labels = {d: ds[d].values for d in other_dims}  # read once: each read converts
        blocks.append(variable.values.reshape(*variable.shape[:2], -1).astype(float))
        for position in np.ndindex(*variable.shape[2:]):
            coords = {d: labels[d][i] for d, i in zip(other_dims, position, strict=True)}
            names.append((str(name), _label(coords)))
    return np.concatenate(blocks, axis=2), names


def _rows(
    ds: xr.Dataset, kind: IntervalKind | None, prob: float, statistics: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per scalar element of every variable in ``ds``: the named statistics and,
    with an interval ``kind``, ``lower`` and ``upper``."""
    draws, names = _columns(ds)
    shared: dict[str, np.ndarray] = {}
    if {"r_hat", "ess_bulk"} <= set(statistics):  # one ranking of the draws for both
        shared["r_hat"], shared["ess_bulk"] = mcmc_stats.rhat_and_ess_bulk(draws)
    columns = {
        stat: shared[stat] if stat in shared else STATISTICS[stat](draws) for stat in statistics
    }
    if kind is not None:
        columns["lower"], columns["upper"] = interval(draws, kind, prob)
    rows: list[dict[str, Any]] = []
    for i, (name, level) in enumerate(names):
        row: dict[str, Any] = {"name": name, "level": level}
        for stat, values in columns.items():
            value = float(values[i])
            # A fixed quantity (a Constant hyperprior) has no Monte Carlo error.
            row[stat] = value if math.isfinite(value) or stat == "r_hat" else 0.0
        rows.append(row)
    return rows


def summarize(
    model: bmb.Model, posterior: xr.Dataset, fit_id: str, kind: IntervalKind, prob: float
) -> Summary:
    """The summary resource: every fixed effect, group SD and auxiliary parameter."""
    roles = parameter_roles(model)
    names = [n for n in roles if n in posterior]
    rows = _rows(posterior[names], kind, prob, SUMMARY)
    parameters = [
        ParameterSummary(**row, kind=roles[row["name"]].kind, term=roles[row["name"]].term)
        for row in rows
    ]
    return Summary(fit_id=fit_id, interval=Interval(kind=kind, prob=prob), parameters=parameters)


def group_effects(
    model: bmb.Model, posterior: xr.Dataset, fit_id: str, kind: IntervalKind, prob: float
) -> dict[str, GroupEffects]:
    """For each grouping factor, every level's ranef and coef (fixed part + ranef), and
    its no-pooling estimate and pooling factor where defined (see ``shrinkage``)."""
    shrunk = shrinkage(model, posterior)
    result: dict[str, GroupEffects] = {}
    for factor, terms in group_terms(model).items():
        levels: dict[str, GroupLevel] = {}
        for term in terms:
            own = shrunk.get(get_aliased_name(term))
            _add_term_levels(term, posterior, kind, prob, levels, own)
        names = [get_aliased_name(term) for term in terms]
        sd, corr = var_corr(names, posterior, kind, prob)
        result[factor] = GroupEffects(
            fit_id=fit_id,
            factor=factor,
            interval=Interval(kind=kind, prob=prob),
            levels=list(levels.values()),
            terms=names,
            sd=sd,
            corr=corr,
        )
    return result


def var_corr(
    names: list[str], posterior: xr.Dataset, kind: IntervalKind, prob: float
) -> tuple[list[Estimate | None], list[list[Estimate | None]]]:
    """lme4's ``VarCorr`` of one factor's terms: each SD, and the correlation matrix with
    None where the model does not estimate one (1 on the diagonal)."""
    wanted = {f"{name}_sigma" for name in names}
    wanted |= {correlation_name(a, b) for a in names for b in names if a != b}
    scalars = [n for n in sorted(wanted) if n in posterior and posterior[n].ndim == 2]
    found = _rows(posterior[scalars], kind, prob, ESTIMATE) if scalars else []
    rows = {row["name"]: _estimate(row) for row in found}
    one = Estimate(mean=1.0, sd=0.0, lower=1.0, upper=1.0)
    corr = [
        [
            one if a == b else rows.get(correlation_name(a, b)) or rows.get(correlation_name(b, a))
            for b in names
        ]
        for a in names
    ]
    return [rows.get(f"{name}_sigma") for name in names], corr


def _fixed_counterpart(term: Any, posterior: xr.Dataset) -> xr.DataArray | None:
    """The common term a group-level term deviates from (Intercept for ``1|g``).

    Names follow the term's component (``sigma_1|g`` deviates from ``sigma_Intercept``). A
    categorical expression has no single fixed counterpart: None, and no ``coef``.
    """
    name = get_aliased_name(term)
    prefix = f"{term.prefix}_" if term.prefix else ""
    expr = name.split("|")[0].removeprefix(prefix)
    fixed_name = prefix + ("Intercept" if expr == "1" else expr)
    if term.name != name or fixed_name not in posterior:
        return None
    fixed = posterior[fixed_name]
    ranef_dims = set(posterior[name].dims) - set(SAMPLE_DIMS)
    if not set(fixed.dims) <= set(SAMPLE_DIMS) or len(ranef_dims) > 1:
        return None
    return fixed


def _add_term_levels(
    term: Any,
    posterior: xr.Dataset,
    kind: IntervalKind,
    prob: float,
    levels: dict[str, GroupLevel],
    own: TermShrinkage | None = None,
) -> None:
    name = get_aliased_name(term)
    ranef = posterior[name]
    factor_dim = next(d for d in ranef.dims if str(d).endswith("__factor_dim"))
    counts = np.bincount(term.group_index, minlength=ranef.sizes[factor_dim])
    fixed = _fixed_counterpart(term, posterior)
    parts = xr.Dataset({"ranef": ranef})
    if fixed is not None:
        parts["coef"] = ranef + fixed
    rows = _rows(parts, kind, prob, ESTIMATE)
    by_level: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        by_level[(row["name"], row["level"])] = row
    other_dims = [d for d in ranef.dims if d not in (*SAMPLE_DIMS, factor_dim)]
    other_sizes = tuple(ranef.sizes[d] for d in other_dims)
    for i, level in enumerate(ranef[factor_dim].values):
        entry = levels.setdefault(
            str(level), GroupLevel(level=str(level), n_obs=int(counts[i]), effects=[])
        )
        for extra in np.ndindex(*other_sizes):
            sub = {d: ranef[d].values[j] for d, j in zip(other_dims, extra, strict=True)}
            coords = {factor_dim: level, **sub}
            label = _label({d: coords[d] for d in ranef.dims if d not in SAMPLE_DIMS})
            term_name = name if not sub else f"{name}[{_label(sub)}]"
            entry.effects.append(
                LevelEffect(
                    term=term_name,
                    ranef=_estimate(by_level[("ranef", label)]),  # type: ignore[index]
                    coef=(
                        _estimate(by_level[("coef", label)])  # type: ignore[index]
                        if fixed is not None
                        else None
                    ),
                    **_shrinkage_fields(own, i, int(np.ravel_multi_index(extra, other_sizes))),
                )
            )


def _shrinkage_fields(own: TermShrinkage | None, level: int, column: int) -> dict[str, Any]:
    """``no_pooling`` and ``pooling_factor`` of one level and column (None: undefined)."""
    if own is None:
        return {}
    estimate, se = float(own.estimate[level, column]), float(own.se[level, column])
    pooling = float(own.pooling[level, column])
    return {
        "no_pooling": (
            NoPooling(estimate=estimate, se=se if math.isfinite(se) else None)
            if math.isfinite(estimate)
            else None
        ),
        "pooling_factor": pooling if math.isfinite(pooling) else None,
    }


def _estimate(row: dict[str, Any]) -> Estimate:
    return Estimate(mean=row["mean"], sd=row["sd"], lower=row["lower"], upper=row["upper"])


def diagnose(
    model: bmb.Model,
    posterior: xr.Dataset,
    sample_stats: xr.Dataset,
    fit_id: str,
    *,
    parameterization: str | None = None,
    parameterization_reason: str | None = None,
    likelihood: str | None = None,
) -> Diagnostics:
    """R-hat, ESS and sampler checks with a verdict and plain-language warnings, and how
    the fit was sampled (parameterization, likelihood)."""
    roles = parameter_roles(model)
    group_names = [get_aliased_name(t) for ts in group_terms(model).values() for t in ts]
    names = [
        n
        for n in [*roles, *group_names]
        if n in posterior and float(posterior[n].std()) > 0  # constants have no diagnostics
    ]
    rows = _rows(posterior[names], None, DEFAULT_PROB, DIAGNOSTICS)
    chains = posterior.sizes["chain"]
    draws = posterior.sizes["draw"]
    divergences = int(sample_stats["diverging"].sum()) if "diverging" in sample_stats else 0
    depth_hits = (
        int(sample_stats["maxdepth_reached"].sum()) if "maxdepth_reached" in sample_stats else 0
    )
    ebfmi = _ebfmi(sample_stats)
    params = [
        ParameterDiagnostics(
            name=r["name"] if r["level"] is None else f"{r['name']}[{r['level']}]",
            r_hat=r["r_hat"],
            ess_bulk=r["ess_bulk"],
            ess_tail=r["ess_tail"],
            mcse_mean=r["mcse_mean"],
        )
        for r in rows
    ]
    max_rhat = max(p.r_hat for p in params)
    min_bulk = min(p.ess_bulk for p in params)
    min_tail = min(p.ess_tail for p in params)
    verdict, warnings = verdict_for(
        chains=chains,
        draws=draws,
        max_rhat=max_rhat,
        min_ess_bulk=min_bulk,
        min_ess_tail=min_tail,
        divergences=divergences,
        depth_hits=depth_hits,
        ebfmi=ebfmi,
        worst={k: _worst(params, k) for k in ("r_hat", "ess_bulk", "ess_tail")},
    )
    left = correlations_of(model).left_independent
    warnings += [
        f"the group terms {block} were estimated independently, without their correlation: {reason}"
        for block, reason in left.items()
    ]
    return Diagnostics(
        fit_id=fit_id,
        verdict=Verdict(verdict),
        warnings=warnings,
        chains=chains,
        draws=draws,
        divergences=divergences,
        max_treedepth_hits=depth_hits,
        ebfmi=ebfmi,
        max_r_hat=max_rhat,
        min_ess_bulk=min_bulk,
        min_ess_tail=min_tail,
        parameters=params,
        parameterization=parameterization,
        parameterization_reason=parameterization_reason,
        likelihood=likelihood,
        left_independent=dict(left),
    )


def _worst(params: list[ParameterDiagnostics], key: str) -> str:
    pick = max if key == "r_hat" else min
    return pick(params, key=lambda p: float(getattr(p, key))).name


def _ebfmi(sample_stats: xr.Dataset) -> list[float]:
    if "energy" not in sample_stats:
        return []
    energy = sample_stats["energy"].values
    diffs = np.diff(energy, axis=1)
    variance = energy.var(axis=1)
    return [float(v) for v in (diffs**2).mean(axis=1) / np.where(variance > 0, variance, np.nan)]


def verdict_for(
    *,
    chains: int,
    draws: int,
    max_rhat: float,
    min_ess_bulk: float,
    min_ess_tail: float,
    divergences: int,
    depth_hits: int,
    ebfmi: list[float],
    worst: dict[str, str],
) -> tuple[str, list[str]]:
    """pass, warn or fail, with one plain-language warning per problem found.

    fail: R-hat at or above 1.05, bulk ESS under 50 per chain, or divergences in more than
    1% of draws: the posterior summaries should not be used.
    warn: R-hat at or above 1.01, bulk or tail ESS under 100 per chain, any divergence,
    tree-depth limit hits, or E-BFMI under 0.3 in some chain: usable with care.
    """
    warnings: list[str] = []
    failed = False
    total = chains * draws
    if max_rhat >= RHAT_GOOD:
        failed |= max_rhat >= RHAT_BAD
        warnings.append(
            f"R-hat reaches {max_rhat:.3f} (for {worst['r_hat']}); chains disagree, values "
            f"below {RHAT_GOOD} are wanted. Run longer chains or reparameterise."
        )
    good_ess = ESS_PER_CHAIN_GOOD * chains
    if min_ess_bulk < good_ess:
        failed |= min_ess_bulk < ESS_PER_CHAIN_BAD * chains
        warnings.append(
            f"Bulk effective sample size is only {min_ess_bulk:.0f} (for {worst['ess_bulk']}); "
            f"at least {good_ess} is wanted for reliable means. Draw more samples."
        )
    if min_ess_tail < good_ess:
        warnings.append(
            f"Tail effective sample size is only {min_ess_tail:.0f} (for {worst['ess_tail']}); "
            f"at least {good_ess} is wanted for reliable intervals. Draw more samples."
        )
    if divergences:
        failed |= divergences > 0.01 * total
        warnings.append(
            f"{divergences} of {total} draws diverged; the posterior may be biased. Raise "
            "target_accept (e.g. 0.95) or reparameterise."
        )
    if depth_hits:
        warnings.append(f"{depth_hits} draws hit the maximum tree depth; sampling was inefficient.")
    low = [i for i, v in enumerate(ebfmi) if np.isfinite(v) and v < EBFMI_GOOD]
    if low:
        warnings.append(
            f"E-BFMI is below {EBFMI_GOOD} in chains {low}; the sampler explored the energy "
            "distribution poorly."
        )
    verdict = "fail" if failed else "warn" if warnings else "pass"
    return verdict, warnings
