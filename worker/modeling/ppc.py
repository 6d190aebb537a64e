"""Posterior predictive checks: does the fitted model reproduce a statistic of its data?

For posterior draws s = 1..S with parameters theta_s, a replicated data set
``y_rep^s ~ p(y | theta_s)`` is drawn on the rows the model was fitted on (the same
predictors and groups). For a statistic T over rows, the check compares T(y) with the
distribution of T(y_rep^s) through the posterior predictive p-value (Gelman, Meng and Stern
1996; BDA3 ch. 6)

    p = 1/S sum_s ( 1[T(y_rep^s) > T(y)] + 1/2 1[T(y_rep^s) = T(y)] ),

ties counted half: a discrete statistic the model reproduces (the min of counts, 0 in the
data and in every replicate) gets 0.5, not 1. A p near 0 or 1 puts the data's T in a tail
of what the model predicts: the model misses that feature of the data. Per level of a
factor, T is taken over the level's rows alone.

    mean, sd (n - 1, as R's ``sd`` and bayesplot), min, max, median, q05 and q95 (numpy's
    default quantile: R's type 7, R's default)
    bernoulli, binomial: T = sum_i y_i / sum_i n_i, the proportion of successes (n_i = 1
                         for bernoulli); its other statistics are functions of it or
                         trivially 0 and 1, so only ``mean`` is accepted
    cumulative:          T of the 0-based category positions, and for each category k
                         the proportion of rows in it, T_k = 1/n sum_i 1[y_i = k]

Memory and time. T of one draw needs all rows of that draw at once, so the work goes in
chunks of draws (one chain's consecutive draws) whose (draws x rows) arrays fit in
:data:`CHUNK_BUDGET_BYTES`, counted as predictions count them. Responses are drawn by
Bambi (``family.posterior_predictive``; ordinal categories here, see ``replicated_responses``) in
blocks of :func:`block_draws` draws, each with a generator seeded by (seed, chain, block);
chunks are whole blocks. Bambi seeds its graph
afresh in every call, so a generator shared by the chunks would draw other numbers for
another chunk size: with blocks, neither the chunk size nor the order of the work changes a
number (the parameters are computed elementwise per draw and row). Draws per block are set
by the rows alone: ~256 K values, 2 MiB per array, where Bambi's fixed cost per call
(~8 ms) is small. The per-draw statistics kept for the summaries take
S x (1 + levels + categories) x 8 bytes: 32 MB at 4,000 draws and 1,000 levels, the size of
one 1,000-level group term of the posterior already in memory. Measured on
``y ~ x + (1 | g)``, 300 levels, 2 x 250 draws, ``q05`` by ``g``: 20,000 rows 1.3 s with a
peak of 22 MiB (tracemalloc); 100,000 rows 12-18 s, half of it in re-encoding the group
factor on every row for each chunk (formulae, inside ``fitted_parameters``).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import bambi as bmb
import numpy as np
import pandas as pd
import xarray as xr
from bambi.utils import get_aliased_name, response_evaluate_new_data

from service.core.errors import InvalidRequest
from service.core.families import family as family_named
from service.core.schemas import (
    Estimate,
    Interval,
    IntervalKind,
    Ppc,
    PpcCategory,
    PpcGroup,
    PpcStatistic,
    PpcStatName,
)
from worker.modeling import prediction
from worker.modeling.prediction import (
    BASE_COPIES,
    COPIES_PER_CATEGORY,
    OBS,
    _categories,
    _factor_dim,
    _new_responses,
    _term_shape,
    fitted_parameters,
)
from worker.modeling.summaries import SAMPLE_DIMS, group_terms, interval

#: Bytes the arrays of one chunk may take (the predictions' budget).
CHUNK_BUDGET_BYTES = prediction.CHUNK_BUDGET_BYTES
#: Arrays of (draws x rows) a check holds besides a prediction's: the rows sorted by level,
#: and the copy a quantile partitions.
PPC_COPIES = 2
#: Values (draws x rows) of responses drawn in one call to Bambi: the unit of randomness.
DRAW_BLOCK_VALUES = 2**18
#: Levels of ``by`` reported at most (those with the most rows when there are more).
MAX_LEVELS = 1000
#: Posterior draws a check replicates the data from at most (evenly thinned per chain):
#: a check costs rows x draws, and 1,000 replicated data sets put a p-value's Monte Carlo
#: error under 0.016, while 4 x 1,000 draws of 100,000 rows took minutes.
MAX_DRAWS = 1000

#: T per draw: values (draws x rows) and the rows' trials (binomial) -> one T per draw.
PerDraw = Callable[[np.ndarray, np.ndarray | None], np.ndarray]

STATISTICS: dict[str, PerDraw] = {
    "mean": lambda y, _: y.mean(axis=1),
    "sd": lambda y, _: y.std(axis=1, ddof=1),
    "min": lambda y, _: y.min(axis=1),
    "max": lambda y, _: y.max(axis=1),
    "median": lambda y, _: np.median(y, axis=1),
    "q05": lambda y, _: np.quantile(y, 0.05, axis=1),
    "q95": lambda y, _: np.quantile(y, 0.95, axis=1),
}
#: Order statistics per level are read from sorted rows: the quantile of each.
ORDER_STATISTICS = {"median": 0.5, "q05": 0.05, "q95": 0.95}
WORDS = {
    "mean": "mean",
    "sd": "standard deviation (n - 1)",
    "min": "minimum",
    "max": "maximum",
    "median": "median",
    "q05": "5% quantile",
    "q95": "95% quantile",
}


def _proportion(successes: np.ndarray, trials: np.ndarray | None) -> np.ndarray:
    assert trials is not None
    return np.asarray(successes.sum(axis=1) / trials.sum())


@dataclass(frozen=True)
class _Statistic:
    """T: its name in the request, in words, and its value for each draw."""

    name: str
    words: str
    per_draw: PerDraw


@dataclass(frozen=True)
class ObservedResponse:
    """The observed response as the statistics see it: values (successes of a binomial,
    0-based positions of an ordinal), a binomial's trials, an ordinal's categories."""

    y: np.ndarray
    trials: np.ndarray | None = None
    categories: list[str] | None = None


@dataclass(frozen=True)
class _Levels:
    """The reported levels of ``by``: level j's rows are ``order[bounds[j]:bounds[j + 1]]``."""

    n_levels: int
    labels: list[str]
    n_obs: np.ndarray
    order: np.ndarray
    bounds: np.ndarray


def posterior_predictive_check(
    model: bmb.Model,
    posterior: xr.Dataset,
    data: pd.DataFrame,
    *,
    family: str,
    stat: PpcStatName,
    by: str | None,
    prob: float,
    interval_kind: IntervalKind,
    seed: int,
    fit_id: str,
) -> Ppc:
    """T(y) against T(y_rep) over the posterior draws, overall and per level of ``by`` (a
    grouping factor of the model or a column of ``data``); ``data`` are the rows the model
    was fitted on. The same seed gives the same numbers, in any chunks."""
    kind = family_named(family).response
    statistic = _statistic(kind, stat)
    posterior = thinned(posterior, MAX_DRAWS)
    response = observed_response(model, data, kind)
    levels = None if by is None else _levels(model, posterior, data, by, stat, response)
    observed = _statistics(response.y[None, :], response, statistic, levels)[0]
    if not np.isfinite(observed[0]):
        raise InvalidRequest.one("stat", f"the {statistic.words} is undefined on this data")
    replicated = _replicated(model, posterior, data, response, statistic, levels, seed)
    overall, *summaries = _summaries(observed, replicated, interval_kind, prob)
    groups: list[PpcGroup] = []
    if levels is not None:
        reported, summaries = summaries[: len(levels.labels)], summaries[len(levels.labels) :]
        groups = [
            PpcGroup(level=label, n_obs=int(n_obs), **summary.model_dump())
            for label, n_obs, summary in zip(levels.labels, levels.n_obs, reported, strict=True)
        ]
    categories = None
    if response.categories is not None:
        categories = [
            PpcCategory(category=name, **summary.model_dump())
            for name, summary in zip(response.categories, summaries, strict=True)
        ]
    return Ppc(
        fit_id=fit_id,
        stat=stat,
        statistic=statistic.words,
        interval=Interval(kind=interval_kind, prob=prob),
        n_obs=len(data),
        n_draws=replicated.shape[0],
        overall=overall,
        by=by,
        n_levels=None if levels is None else levels.n_levels,
        levels=groups,
        categories=categories,
    )


def thinned(posterior: xr.Dataset, max_draws: int) -> xr.Dataset:
    """Every k-th draw of each chain, k the smallest that keeps at most ``max_draws``."""
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    step = -(-total // max_draws)
    return posterior if step == 1 else posterior.isel(draw=slice(None, None, step))


def _statistic(kind: str, stat: str) -> _Statistic:
    """The statistic ``stat`` names for a family's kind of response."""
    if kind in ("binary", "binomial"):
        if stat != "mean":
            raise InvalidRequest.one(
                "stat",
                f"a {kind} response has one statistic, its proportion of successes: use "
                "stat=mean (the others are functions of it, or trivially 0 and 1)",
            )
        if kind == "binomial":
            return _Statistic(stat, "proportion of successes (successes / trials)", _proportion)
        return _Statistic(stat, "proportion of successes", STATISTICS["mean"])
    if kind == "ordinal":
        return _Statistic(stat, f"{WORDS[stat]} of the 0-based category position", STATISTICS[stat])
    return _Statistic(stat, f"{WORDS[stat]} of the response", STATISTICS[stat])


def observed_response(model: bmb.Model, data: pd.DataFrame, kind: str) -> ObservedResponse:
    """The response of ``data`` as the statistics see it."""
    raw = np.asarray(response_evaluate_new_data(model, data))
    if kind == "binomial":  # columns: successes, trials
        return ObservedResponse(raw[:, 0].astype(float), raw[:, 1].astype(float))
    if kind == "ordinal":  # one indicator column per category
        positions = raw.argmax(axis=1) if raw.ndim == 2 else raw
        levels = [str(level) for level in model.response_term.levels]
        return ObservedResponse(positions.astype(float), categories=levels)
    return ObservedResponse(raw.reshape(-1).astype(float))


def block_draws(n_rows: int) -> int:
    """Draws per call to Bambi's response draws: set by the rows alone, never the budget."""
    return max(1, DRAW_BLOCK_VALUES // max(n_rows, 1))


def chunk_draws(model: bmb.Model, posterior: xr.Dataset, n_rows: int) -> int:
    """Draws per chunk: whole blocks whose arrays fit in :data:`CHUNK_BUDGET_BYTES` (at
    least one block). A (draw, row) value lives in as many arrays as in a prediction, plus
    ``PPC_COPIES``: see ``prediction.rows_per_chunk``."""
    copies = BASE_COPIES + PPC_COPIES + COPIES_PER_CATEGORY * _categories(model)
    for component in model.conditional_parameters.values():
        for term in component.group_specific_terms.values():
            width, _ = _term_shape(posterior[get_aliased_name(term)])
            copies += 1 + width
    fitting = CHUNK_BUDGET_BYTES // (8 * max(n_rows, 1) * copies)
    block = block_draws(n_rows)
    return block * max(1, fitting // block)


def _replicated(
    model: bmb.Model,
    posterior: xr.Dataset,
    data: pd.DataFrame,
    response: ObservedResponse,
    statistic: _Statistic,
    levels: _Levels | None,
    seed: int,
) -> np.ndarray:
    """T(y_rep) of every draw (chain-major), one column per statistic reported."""
    chains, draws, n = posterior.sizes["chain"], posterior.sizes["draw"], len(data)
    block, per_chunk = block_draws(n), chunk_draws(model, posterior, n)
    result: np.ndarray | None = None
    for chain in range(chains):
        for start in range(0, draws, per_chunk):
            stop = min(start + per_chunk, draws)
            part = posterior.isel(chain=[chain], draw=slice(start, stop))
            extended = fitted_parameters(model, part, data)
            for first in range(start, stop, block):
                last = min(first + block, stop)
                spawn = (chain, first // block)
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn))
                subset = extended.isel(draw=slice(first - start, last - start))
                y = replicated_responses(model, subset, data, rng, response).reshape(
                    last - first, n
                )
                t = _statistics(y, response, statistic, levels)
                if result is None:
                    result = np.empty((chains * draws, t.shape[1]))
                result[chain * draws + first : chain * draws + last] = t
                # Bambi's draws compile a PyTensor graph holding the block's arrays in
                # reference cycles (see ``prediction.predict``).
                gc.collect(1)
    assert result is not None
    return result


def replicated_responses(
    model: bmb.Model,
    extended: xr.Dataset,
    data: pd.DataFrame,
    rng: np.random.Generator,
    response: ObservedResponse,
) -> np.ndarray:
    """Draws (chain, draw, row) of responses, as floats.

    Ordinal categories are drawn here, by PyTensor's own rule (category = how many
    cumulative probabilities lie below a uniform draw), vectorised: PyTensor applies it
    through ``np.vectorize``, a Python call per value, and in the FAST_COMPILE mode Bambi's
    draws run in here that took 4 us per value: 44 s for 10 M values, 0.6 s vectorised.
    """
    if response.categories is None:
        values = _new_responses(model, extended, data, rng).transpose(*SAMPLE_DIMS, OBS)
        return np.asarray(values.values, dtype=float)
    p = np.asarray(extended[model.family.likelihood.parent].transpose(*SAMPLE_DIMS, OBS, ...))
    uniform = rng.uniform(size=p.shape[:-1])
    below = (np.cumsum(p, axis=-1) < uniform[..., None]).sum(axis=-1)
    return np.asarray(np.minimum(below, p.shape[-1] - 1), dtype=float)  # sum(p) < u < 1


def _statistics(
    y: np.ndarray, response: ObservedResponse, statistic: _Statistic, levels: _Levels | None
) -> np.ndarray:
    """T of each draw of ``y`` (draws x rows): overall, per reported level, per category.

    Every T reduces the rows of one draw along a contiguous axis, so its value does not
    depend on the number of draws in the array.
    """
    columns = [statistic.per_draw(y, response.trials)[:, None]]
    if levels is not None:
        by_level = np.take(y, levels.order, axis=1)  # (draw, rows of reported levels)
        if statistic.name in ORDER_STATISTICS:
            columns.append(_order_statistics(by_level, levels, statistic.name))
        else:
            trials = None if response.trials is None else response.trials[levels.order]
            for start, stop in pairwise(levels.bounds.tolist()):
                rows = None if trials is None else trials[start:stop]
                columns.append(statistic.per_draw(by_level[:, start:stop], rows)[:, None])
    if response.categories is not None:
        for k in range(len(response.categories)):
            columns.append((y == k).mean(axis=1)[:, None])
    return np.concatenate(columns, axis=1)


def _order_statistics(by_level: np.ndarray, levels: _Levels, stat: str) -> np.ndarray:
    """The median or a quantile of every level's rows, as ``np.median`` and ``np.quantile``
    compute them, bit for bit: each level's rows are sorted in place (a loop over levels,
    ~7 us each, where a call of ``np.quantile`` per level took ~100 us), then the order
    statistics of all levels are read at once."""
    for start, stop in pairwise(levels.bounds.tolist()):
        by_level[:, start:stop].sort(axis=1)
    n, first = levels.n_obs, levels.bounds[:-1]
    if stat == "median":  # the middle value, or the mean of the two middle values
        return np.asarray((by_level[:, first + (n - 1) // 2] + by_level[:, first + n // 2]) / 2)
    virtual = (n - 1) * ORDER_STATISTICS[stat]  # numpy's "linear" method: R's type 7
    below = np.floor(virtual).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    a, b = by_level[:, first + below], by_level[:, first + above]
    t = virtual - below
    difference = b - a  # numpy's _lerp, including its form for t >= 0.5
    return np.asarray(np.where(t >= 0.5, b - difference * (1 - t), a + difference * t))


def _summaries(
    observed: np.ndarray, replicated: np.ndarray, kind: IntervalKind, prob: float
) -> list[PpcStatistic]:
    """Each column's observed T, the mean, sd and interval of its T(y_rep), its p-value."""
    lower, upper = interval(replicated[None], kind, prob)
    mean = replicated.mean(axis=0)
    sd = replicated.std(axis=0, ddof=1)
    above = (replicated > observed).sum(axis=0) + 0.5 * (replicated == observed).sum(axis=0)
    p_value = above / replicated.shape[0]
    return [
        PpcStatistic(
            observed=float(observed[j]),
            replicated=Estimate(
                mean=float(mean[j]), sd=float(sd[j]), lower=float(lower[j]), upper=float(upper[j])
            ),
            p_value=float(p_value[j]),
        )
        for j in range(observed.size)
    ]


def _levels(
    model: bmb.Model,
    posterior: xr.Dataset,
    data: pd.DataFrame,
    by: str,
    stat: str,
    response: ObservedResponse,
) -> _Levels:
    """The levels of ``by`` where T is defined: all up to ``MAX_LEVELS``, else the
    ``MAX_LEVELS`` with the most rows; in the factor's order."""
    codes, labels = _level_codes(model, posterior, data, by)
    present = codes >= 0  # a column's missing values belong to no level
    counts = np.bincount(codes[present], minlength=len(labels))
    defined = counts >= (2 if stat == "sd" else 1)
    if response.trials is not None:
        trials = np.bincount(codes[present], response.trials[present], minlength=len(labels))
        defined &= trials > 0
    chosen = np.flatnonzero(defined)
    if chosen.size > MAX_LEVELS:
        chosen = np.sort(chosen[np.argsort(-counts[chosen], kind="stable")[:MAX_LEVELS]])
    position = np.full(len(labels) + 1, -1)  # codes of -1 read the last entry: no level
    position[chosen] = np.arange(chosen.size)
    row_position = position[codes]
    kept = np.flatnonzero(row_position >= 0)
    order = kept[np.argsort(row_position[kept], kind="stable")]
    return _Levels(
        n_levels=len(labels),
        labels=[labels[i] for i in chosen],
        n_obs=counts[chosen],
        order=order,
        bounds=np.concatenate([[0], np.cumsum(counts[chosen])]),
    )


def _level_codes(
    model: bmb.Model, posterior: xr.Dataset, data: pd.DataFrame, by: str
) -> tuple[np.ndarray, list[str]]:
    """Each row's level of ``by`` (-1: none) and the levels' labels: a grouping factor's
    as the groups resource names them, a column's as text in the column's order."""
    factors = group_terms(model)
    if by in factors:
        term = factors[by][0]
        codes = np.asarray(term.group_index, dtype=np.int64)
        if codes.size != len(data):
            raise ValueError("the data are not the rows the model was fitted on")
        draws = posterior[get_aliased_name(term)]
        return codes, [str(level) for level in draws[_factor_dim(draws)].values]
    if by in data.columns:
        column = pd.Categorical(data[by])
        return np.asarray(column.codes, dtype=np.int64), [str(c) for c in column.categories]
    known = sorted(factors) + [str(c) for c in data.columns if c not in factors]
    raise InvalidRequest.one(
        "by",
        f"'{by[:40]}' is neither a grouping factor of the model nor a column of its data; "
        f"use one of {known[:20]}",
    )
