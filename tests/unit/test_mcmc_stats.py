"""The vectorised MCMC statistics give ArviZ's numbers, column by column."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import xarray as xr

from worker.modeling import mcmc_stats


def autocorrelated(
    chains: int, draws: int, columns: int, seed: int = 0, disagreement: float = 0.3
) -> np.ndarray:
    """AR(1) chains with a different autocorrelation, scale and offset per column."""
    rng = np.random.default_rng(seed)
    phi = np.linspace(-0.3, 0.97, columns)
    out = np.empty((chains, draws, columns))
    out[:, 0] = rng.normal(size=(chains, columns))
    for t in range(1, draws):
        out[:, t] = phi * out[:, t - 1] + rng.normal(size=(chains, columns))
    shift = rng.normal(scale=disagreement, size=(chains, 1, columns))  # chains disagree
    return (out + shift) * np.linspace(0.1, 10, columns) + np.arange(columns)


def arviz(draws: np.ndarray, function: str, **kwargs: object) -> np.ndarray:
    data = xr.DataArray(draws, dims=("chain", "draw", "k"))
    return np.asarray(getattr(az, function)(data, **kwargs))


@pytest.mark.parametrize("chains, draws", [(4, 1000), (2, 7), (3, 51), (1, 200)])
def test_diagnostics_equal_arviz_on_autocorrelated_draws(chains: int, draws: int) -> None:
    x = autocorrelated(chains, draws, 12)
    expected = {
        "ess_bulk": arviz(x, "ess", method="bulk"),
        "ess_tail": arviz(x, "ess", method="tail", prob=mcmc_stats.TAIL_PROBS),
        "mcse_mean": arviz(x, "mcse", method="mean"),
        "mcse_sd": arviz(x, "mcse", method="sd"),
        "rhat": arviz(x, "rhat"),
    }
    for name, want in expected.items():
        got = getattr(mcmc_stats, name)(x)
        np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True, err_msg=name)


def test_intervals_equal_arviz() -> None:
    x = autocorrelated(4, 500, 6, seed=3)
    for prob in (0.5, 0.89, 0.95):
        hdi = arviz(x, "hdi", prob=prob)  # (k, ci_bound)
        eti = arviz(x, "eti", prob=prob)
        np.testing.assert_allclose(np.stack(mcmc_stats.hdi(x, prob), axis=-1), hdi)
        np.testing.assert_allclose(np.stack(mcmc_stats.eti(x, prob), axis=-1), eti)


def test_constant_and_missing_columns_are_answered_as_arviz_does() -> None:
    x = autocorrelated(4, 100, 3, seed=1)
    x[:, :, 1] = 2.5  # a constant (a fixed hyperparameter)
    x[0, 10, 2] = np.nan
    for name, function, kwargs in [
        ("ess_bulk", "ess", {"method": "bulk"}),
        ("mcse_mean", "mcse", {"method": "mean"}),
        ("rhat", "rhat", {}),
    ]:
        got = getattr(mcmc_stats, name)(x)
        np.testing.assert_allclose(got, arviz(x, function, **kwargs), equal_nan=True)
    assert mcmc_stats.ess_bulk(x)[1] == 400  # every draw counts for a constant
    assert np.isnan(mcmc_stats.rhat(x)[2])


def test_a_slowly_mixing_column_has_few_effective_draws() -> None:
    x = autocorrelated(4, 1000, 12, disagreement=0.0)
    ess = mcmc_stats.ess_bulk(x)
    assert ess[0] > 4000 > 1000 > ess[-1]  # antithetic (phi < 0) vs phi = 0.97


def test_tied_draws_share_their_average_rank_as_in_scipy() -> None:
    from scipy import stats

    rows = np.random.default_rng(2).integers(0, 5, size=(3, 40)).astype(float)
    np.testing.assert_array_equal(
        mcmc_stats._average_ranks(rows), stats.rankdata(rows, method="average", axis=1)
    )


@pytest.mark.parametrize("chains, draws", [(4, 300), (1, 200), (2, 3)])
def test_r_hat_and_bulk_ess_from_one_ranking_are_the_same_numbers(chains: int, draws: int) -> None:
    x = autocorrelated(chains, draws, 5, seed=2)
    x[:, :, 1] = 2.5
    x[0, 1, 3] = np.nan
    together = mcmc_stats.rhat_and_ess_bulk(x)
    np.testing.assert_array_equal(together[0], mcmc_stats.rhat(x))
    np.testing.assert_array_equal(together[1], mcmc_stats.ess_bulk(x))
