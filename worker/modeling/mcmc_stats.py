"""MCMC statistics for many scalars at once: the same numbers as ArviZ, vectorised.

ArviZ computes R-hat, ESS and MCSE one scalar at a time in Python; a model with 1,000 group
levels spent 10-15 s there. These functions take draws shaped ``(chain, draw, k)`` and
return one value per column ``k``, following Vehtari et al. (2021) exactly as
``arviz_stats`` implements it (rank normalisation with Blom's offset, split chains, Geyer's
initial monotone sequence on FFT autocovariances). Tail ESS uses the 5% and 95% quantiles,
as Stan and the paper do. ``tests/unit/test_mcmc_stats.py`` checks every function against
ArviZ on autocorrelated draws, constant columns and NaNs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, wraps

import numpy as np
from numpy.typing import NDArray
from scipy.fft import irfft, next_fast_len, rfft
from scipy.special import ndtri

Array = NDArray[np.float64]
TAIL_PROBS = (0.05, 0.95)
MIN_DRAWS = 4


def _guarded(draws: Array, compute: Callable[[], Array], min_chains: int = 1) -> Array:
    """``compute()``, with NaN for every column where ArviZ answers NaN: too few draws or
    chains, or a NaN among the column's draws."""
    if draws.shape[1] < MIN_DRAWS or draws.shape[0] < min_chains:
        return np.full(draws.shape[2], np.nan)
    has_nan = np.isnan(draws).any(axis=(0, 1))
    return np.where(has_nan, np.nan, compute())


def _needs_draws(
    statistic: Callable[[Array], Array], min_chains: int = 1
) -> Callable[[Array], Array]:
    """``statistic``, answering NaN where ArviZ would (see ``_guarded``)."""

    @wraps(statistic)
    def guarded(draws: Array) -> Array:
        return _guarded(draws, lambda: statistic(draws), min_chains)

    return guarded


def _split(draws: Array) -> Array:
    """Each chain cut in two halves (the middle draw dropped when their number is odd)."""
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, -half:]], axis=0)


def _z_scale(draws: Array) -> Array:
    """Rank-normalise each column over all its chains and draws."""
    chains, n_draws, k = draws.shape
    size = chains * n_draws
    ranks = _average_ranks(np.ascontiguousarray(draws.reshape(size, k).T))
    return np.asarray(ndtri((ranks.T - 3 / 8) / (size - 3 / 4 + 1))).reshape(draws.shape)


def _average_ranks(rows: Array) -> Array:
    """1-based ranks within each row, ties sharing their average rank (scipy's
    ``rankdata(method="average")``, several times faster on many rows)."""
    order = np.argsort(rows, axis=1)
    ordered = np.take_along_axis(rows, order, axis=1)
    positions = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    ranks = np.empty(rows.shape)
    starts = np.ones(rows.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    if starts.all():  # no ties (continuous draws): the rank is the sorted position
        np.put_along_axis(ranks, order, positions + 1.0, axis=1)
        return ranks
    ends = np.ones(rows.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, positions, rows.shape[1])[:, ::-1], axis=1)[:, ::-1]
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=1)
    return ranks


def _ess(draws: Array) -> Array:
    """Effective sample size of each column (chains as given: split them before)."""
    chains, n_draws, k = draws.shape
    total = chains * n_draws
    constant = (draws.max(axis=(0, 1)) - draws.min(axis=(0, 1))) < np.finfo(float).resolution
    by_column = np.ascontiguousarray(np.moveaxis(draws, 2, 0))  # (k, chain, draw)
    centred = by_column - by_column.mean(axis=2, keepdims=True)
    length = next_fast_len(2 * n_draws)
    spectrum = rfft(centred, n=length, axis=2)
    acov = irfft(spectrum * np.conjugate(spectrum), n=length, axis=2)[..., :n_draws] / n_draws
    mean_acov = acov.mean(axis=1).T  # (lag, k)
    mean_var = mean_acov[0] * n_draws / (n_draws - 1.0)
    var_plus = mean_var * (n_draws - 1.0) / n_draws
    if chains > 1:
        var_plus = var_plus + np.var(draws.mean(axis=1), axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var - mean_acov) / var_plus
    rho[0] = 1.0
    # Geyer's initial positive sequence: pairs (rho[2j], rho[2j+1]) while their sum is > 0.
    # The loop in ArviZ computes pair j (lags 2j, 2j + 1) while 2j - 1 < n - 3.
    last_pair = max((n_draws - 1) // 2 - 1, 0)
    pairs = rho[: 2 * (last_pair + 1)].reshape(last_pair + 1, 2, k)
    pair_sums = pairs.sum(axis=1)  # (pair, k); pair 0 is (1, rho[1])
    stops = np.concatenate([np.zeros((1, k), dtype=bool), pair_sums[1:] <= 0])
    first_stop = np.where(stops.any(axis=0), stops.argmax(axis=0), last_pair)
    # Geyer's initial monotone sequence over the complete pairs before the stop.
    monotone = np.minimum.accumulate(pair_sums, axis=0)
    before_stop = np.arange(last_pair + 1)[:, None] < first_stop[None, :]
    columns = np.arange(k)
    stop_even = pairs[first_stop, 0, columns]
    stop_sum = pair_sums[first_stop, columns]
    tail = np.where((stop_sum >= 0) | (stop_even > 0), stop_even, 0.0)
    tau = -1.0 + 2.0 * np.where(before_stop, monotone, 0.0).sum(axis=0) + tail
    tau = np.maximum(tau, 1 / np.log10(total))
    ess = total / tau
    ess[np.isnan(rho).any(axis=0)] = np.nan
    return np.where(constant, float(total), ess)


def _rhat(draws: Array) -> Array:
    """Split R-hat of each column (chains as given)."""
    n_draws = draws.shape[1]
    between = n_draws * np.var(draws.mean(axis=1), axis=0, ddof=1)
    within = np.var(draws, axis=1, ddof=1).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.sqrt((between / within + n_draws - 1) / n_draws))


def _flat(draws: Array) -> Array:
    return draws.reshape(-1, draws.shape[2])


def mean(draws: Array) -> Array:
    """Posterior mean of each column."""
    return np.asarray(_flat(draws).mean(axis=0))


def sd(draws: Array) -> Array:
    """Posterior standard deviation of each column."""
    return np.asarray(_flat(draws).std(axis=0, ddof=1))


@_needs_draws
def ess_bulk(draws: Array) -> Array:
    """Bulk ESS: ESS of the rank-normalised split chains."""
    return _ess(_z_scale(_split(draws)))


@_needs_draws
def ess_tail(draws: Array) -> Array:
    """Tail ESS: the smaller ESS of the indicators of the 5% and 95% quantiles."""
    quantiles = np.quantile(_flat(draws), TAIL_PROBS, axis=0)  # (2, k)
    lower = _ess(_split((draws <= quantiles[0]).astype(float)))
    upper = _ess(_split((draws <= quantiles[1]).astype(float)))
    return np.minimum(lower, upper)


@partial(_needs_draws, min_chains=2)
def rhat(draws: Array) -> Array:
    """Rank-normalised split R-hat: the larger of the bulk and the folded (tail) R-hat."""
    split = _split(draws)
    return _rank_rhat(split, _z_scale(split))


def _rank_rhat(split: Array, z_split: Array) -> Array:
    """R-hat from the split chains and their rank-normalised values."""
    folded = np.abs(split - np.median(_flat(split), axis=0))
    return np.maximum(_rhat(z_split), _rhat(_z_scale(folded)))


def rhat_and_ess_bulk(draws: Array) -> tuple[Array, Array]:
    """``rhat(draws)`` and ``ess_bulk(draws)`` from one ranking of the split chains (each
    alone ranks them; ranking is most of their cost)."""
    split = _split(draws)
    z_split = _z_scale(split)
    return (
        _guarded(draws, lambda: _rank_rhat(split, z_split), min_chains=2),
        _guarded(draws, lambda: _ess(z_split)),
    )


@_needs_draws
def mcse_mean(draws: Array) -> Array:
    """Monte Carlo standard error of the mean."""
    return sd(draws) / np.sqrt(_ess(_split(draws)))


@_needs_draws
def mcse_sd(draws: Array) -> Array:
    """Monte Carlo standard error of the standard deviation."""
    squares = (draws - _flat(draws).mean(axis=0)) ** 2
    ess = _ess(_split(squares))
    evar = _flat(squares).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        varvar = (_flat(squares**2).mean(axis=0) - evar**2) / ess
        return np.asarray(np.sqrt(varvar / evar / 4))


def hdi(draws: Array, prob: float) -> tuple[Array, Array]:
    """Highest density interval: the narrowest interval holding ``prob`` of the draws."""
    ordered = np.sort(np.ascontiguousarray(_flat(draws).T), axis=1)  # a row per column
    n = ordered.shape[1]
    width = min(int(np.floor(prob * n)), n - 1)
    start = np.argmin(ordered[:, width:] - ordered[:, : n - width], axis=1)
    rows = np.arange(ordered.shape[0])
    return ordered[rows, start], ordered[rows, start + width]


def eti(draws: Array, prob: float) -> tuple[Array, Array]:
    """Equal-tailed interval: the (1 - prob)/2 and (1 + prob)/2 quantiles."""
    edge = (1 - prob) / 2
    lower, upper = np.quantile(_flat(draws), [edge, 1 - edge], axis=0)
    return lower, upper
