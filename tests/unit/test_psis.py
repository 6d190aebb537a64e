"""PSIS over many rows at once gives ArviZ's numbers, row for row: the same Pareto k, elpd
and p_loo on ordinary rows, heavy-tailed rows and rows whose tail fit degenerates."""

from __future__ import annotations

import arviz_stats  # noqa: F401  (registers .azstats)
import numpy as np
import pytest
import xarray as xr

from worker.modeling.psis import loo_rows, tail_length


def arviz_loo(log_lik: np.ndarray, r_eff: float) -> tuple[np.ndarray, ...]:
    """ArviZ's pointwise (elpd, k, p_loo) of (chain, draw, row) draws."""
    da = xr.DataArray(log_lik, dims=("chain", "draw", "row"))
    elpd, k, p = da.azstats.loo(sample_dims=["chain", "draw"], r_eff=r_eff)
    return elpd.values, k.values, p.values


def rows(seed: int, chains: int = 4, draws: int = 500) -> np.ndarray:
    """Log likelihood draws: ordinary rows, and rows whose importance ratios 1/p have
    Pareto tails of shape k = 0.3 to 1.2 (-log p exponential with mean k)."""
    rng = np.random.default_rng(seed)
    log_lik = rng.normal(-1.5, 0.4, size=(chains, draws, 120))
    for i, k in enumerate(np.linspace(0.3, 1.2, 40)):
        log_lik[..., i] = -rng.exponential(k, size=(chains, draws))
    return log_lik


@pytest.mark.parametrize("r_eff", [1.0, 0.4, 0.03])
def test_every_row_matches_arviz(r_eff: float) -> None:
    log_lik = rows(seed=7)
    chains, draws, n = log_lik.shape
    ours = loo_rows(log_lik.reshape(chains * draws, n).T, r_eff)
    for mine, theirs in zip(ours, arviz_loo(log_lik, r_eff), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-9, equal_nan=True)
    k = ours[1]
    assert np.isfinite(k).all()
    assert k[:5].max() < 0.5 < 0.7 < k[35:40].min()  # heavy tails show up as unreliable


def test_the_tail_length_follows_the_relative_efficiency() -> None:
    assert tail_length(4000, 1.0) == int(3 * 4000**0.5)
    assert tail_length(4000, 0.25) == int(3 * (4000 / 0.25) ** 0.5)
    assert tail_length(100, 1.0) == 20  # few draws: a fifth of them


def test_rows_of_equal_draws_need_no_smoothing() -> None:
    """A row whose likelihood does not move with the parameters (ArviZ raises on it)."""
    log_lik = np.full((1, 400), -2.0)
    elpd, k, p = loo_rows(log_lik, 1.0)
    assert elpd[0] == pytest.approx(-2.0) and p[0] == pytest.approx(0.0, abs=1e-12)
    assert k[0] == 0.0


def test_too_few_draws_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 25"):
        loo_rows(np.zeros((3, 20)), 1.0)
