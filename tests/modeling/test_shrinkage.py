"""Every level's own (no-pooling) estimate beside its partially pooled one, and how far it
moved toward the population: the pooling factor, 0 = none, 1 = complete.

References are computed here from the data and the posterior draws with plain numpy
(group means, ``np.linalg.lstsq`` per level, an explicit mean over draws); the agreement
asked for is rounding (1e-9 absolute on estimates, 1e-12 relative on se and pooling). The
fits are small (2 chains x 200 draws) and shared.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import spearmanr

from service.core.schemas import FitSpec, ResolvedSampler
from tests.conftest import SEED_CSV
from worker.modeling.building import build_model
from worker.modeling.sampling import sample
from worker.modeling.shrinkage import shrinkage
from worker.modeling.summaries import group_effects

SAMPLER = ResolvedSampler(
    draws=200, tune=200, chains=2, seed=11, target_accept=0.8, method="nutpie"
)
Fit = tuple[bmb.Model, xr.Dataset]


def fit(formula: str, data: pd.DataFrame, family: str = "gaussian", link: str = "identity") -> Fit:
    columns = {name: data[name].tolist() for name in data}
    spec = FitSpec(formula=formula, family=family, link=link, columns=columns, sampler=SAMPLER)
    model = build_model(spec)
    return model, sample(model, SAMPLER, lambda _: None).posterior


def draws(posterior: xr.Dataset, name: str) -> np.ndarray:
    """Every draw of a scalar variable, chains one after another."""
    return np.asarray(posterior[name].values).reshape(-1)


@cache
def seed_study() -> tuple[pd.DataFrame, Fit]:
    data = pd.read_csv(SEED_CSV)
    return data, fit("score ~ (1 | school)", data)


def slopes_data() -> pd.DataFrame:
    """12 groups with their own intercepts and slopes, a common predictor ``w``; group
    ``solo`` has one row and group ``flat`` two rows at the same ``x``."""
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(12), rng.integers(4, 30, 12))
    x = rng.normal(size=g.size)
    w = rng.normal(size=g.size)
    a, b = rng.normal(0, 1.0, 12), rng.normal(0, 0.5, 12)
    y = 1 + a[g] + (0.8 + b[g]) * x - 0.6 * w + rng.normal(0, 0.8, g.size)
    frame = pd.DataFrame({"y": y, "x": x, "w": w, "g": [f"g{i:02d}" for i in g]})
    odd = pd.DataFrame(
        {"y": [1.3, 0.2, 2.0], "x": [0.4, 1.1, 1.1], "w": [0.1, -0.3, 0.5]}
        | {"g": ["solo", "flat", "flat"]}
    )
    return pd.concat([frame, odd], ignore_index=True)


@cache
def slopes() -> tuple[pd.DataFrame, Fit]:
    data = slopes_data()
    return data, fit("y ~ x + w + (x | g)", data)


def levels(model: bmb.Model, term: str = "1|g") -> list[str]:
    """The term's levels as labels, in the order of its effects."""
    return [
        str(level)
        for level in model.parameters[model.family.likelihood.parent]
        .group_specific_terms[term]
        .groups
    ]


def by_level(model: bmb.Model, values: pd.Series, term: str = "1|g") -> np.ndarray:
    """Values indexed by level, in the order of the term's effects."""
    return np.asarray(values.rename(index=str).loc[levels(model, term)], dtype=float)


def test_a_schools_own_estimate_is_its_mean_score_with_se_sigma_over_root_n() -> None:
    data, (model, posterior) = seed_study()
    own = shrinkage(model, posterior)["1|school"]
    by_school = data.groupby("school")["score"]
    means = by_level(model, by_school.mean(), "1|school")
    n = by_level(model, by_school.size(), "1|school")
    np.testing.assert_allclose(own.estimate[:, 0], means, rtol=0, atol=1e-9)
    sigma = draws(posterior, "sigma")
    np.testing.assert_allclose(own.se[:, 0], sigma.mean() / np.sqrt(n), rtol=1e-12)


def test_a_schools_pooling_factor_is_the_mean_over_draws_of_its_weight_on_the_population() -> None:
    """omega_j = mean_s (sigma_s^2 / n_j) / (sigma_s^2 / n_j + tau_s^2), draw by draw."""
    data, (model, posterior) = seed_study()
    own = shrinkage(model, posterior)["1|school"]
    n = by_level(model, data.groupby("school").size(), "1|school")
    sigma, tau = draws(posterior, "sigma"), draws(posterior, "1|school_sigma")
    expected = [np.mean((sigma**2 / k) / (sigma**2 / k + tau**2)) for k in n]
    np.testing.assert_allclose(own.pooling[:, 0], expected, rtol=1e-12)


def test_pooling_factors_lie_in_0_1_and_smaller_schools_pool_more() -> None:
    data, (model, posterior) = seed_study()
    pooling = shrinkage(model, posterior)["1|school"].pooling[:, 0]
    n = by_level(model, data.groupby("school").size(), "1|school")
    assert ((pooling >= 0) & (pooling <= 1)).all()
    # The same draws for every school: the factor falls strictly as n grows, so the rank
    # correlation is -1 (ties in n give ties in the factor).
    assert spearmanr(n, pooling).statistic == pytest.approx(-1, abs=1e-12)
    assert pooling[n == n.min()].min() > pooling[n == n.max()].max()


def test_stored_and_on_demand_group_effects_carry_the_same_shrinkage() -> None:
    _, (model, posterior) = seed_study()
    own = shrinkage(model, posterior)["1|school"]
    schools = levels(model, "1|school")
    for kind, prob in (("hdi", 0.94), ("eti", 0.5)):
        effects = group_effects(model, posterior, "fit", kind, prob)["school"]  # type: ignore[arg-type]
        for row in effects.levels:
            (effect,) = row.effects
            i = schools.index(row.level)
            assert effect.no_pooling is not None
            assert effect.no_pooling.estimate == float(own.estimate[i, 0])
            assert effect.no_pooling.se == float(own.se[i, 0])
            assert effect.pooling_factor == float(own.pooling[i, 0])


def test_a_levels_own_slopes_are_its_least_squares_on_the_partial_residual() -> None:
    """The partial residual removes the common term with no group counterpart
    (``w``, at its posterior mean); intercept and slope are fitted jointly per level."""
    data, (model, posterior) = slopes()
    result = shrinkage(model, posterior)
    residual = data["y"] - data["w"] * float(posterior["w"].mean())
    sigma = draws(posterior, "sigma")
    tau = np.stack([draws(posterior, "1|g_sigma"), draws(posterior, "x|g_sigma")], axis=1)
    checked = 0
    for i, level in enumerate(levels(model)):
        rows = (data["g"] == level).to_numpy()
        if level in ("solo", "flat"):
            continue
        z = np.column_stack([np.ones(rows.sum()), data["x"][rows]])
        expected = np.linalg.lstsq(z, residual[rows], rcond=None)[0]
        variance = np.diag(np.linalg.inv(z.T @ z))
        for k, term in enumerate(("1|g", "x|g")):
            own = result[term]
            assert own.estimate[i, 0] == pytest.approx(expected[k], abs=1e-9)
            assert own.se[i, 0] == pytest.approx(sigma.mean() * np.sqrt(variance[k]), rel=1e-12)
            se2 = sigma**2 * variance[k]
            weight = np.mean(se2 / (se2 + tau[:, k] ** 2))
            assert own.pooling[i, 0] == pytest.approx(weight, rel=1e-12)
            assert 0 <= own.pooling[i, 0] <= 1
        checked += 1
    assert checked == 12


def test_a_level_too_small_for_its_own_slope_gets_nulls_not_numbers() -> None:
    """One row cannot give an intercept and a slope; neither can two rows at one ``x``."""
    _, (model, posterior) = slopes()
    effects = group_effects(model, posterior, "fit", "hdi", 0.94)["g"]
    by_level = {row.level: row for row in effects.levels}
    for level in ("solo", "flat"):
        assert len(by_level[level].effects) == 2
        for effect in by_level[level].effects:
            assert effect.no_pooling is None
            assert effect.pooling_factor is None
            assert np.isfinite(effect.ranef.mean)  # the pooled estimate is still there
    regular = by_level["g00"].effects
    assert all(e.no_pooling is not None and e.pooling_factor is not None for e in regular)


def binary_data() -> pd.DataFrame:
    """Eight groups of 3 to 40 trials; group ``g7`` succeeds every time."""
    rng = np.random.default_rng(8)
    sizes = [3, 5, 8, 12, 20, 30, 40, 6]
    g = np.repeat(np.arange(8), sizes)
    p = 1 / (1 + np.exp(-rng.normal(0, 1, 8)))
    b = (rng.uniform(size=g.size) < p[g]).astype(int)
    b[g == 7] = 1
    return pd.DataFrame({"b": b, "x": rng.normal(size=g.size), "g": [f"g{i}" for i in g]})


def test_an_intercept_only_logit_model_uses_the_logit_of_each_levels_proportion() -> None:
    data = binary_data()
    model, posterior = fit("b ~ (1 | g)", data, "bernoulli", "logit")
    own = shrinkage(model, posterior)["1|g"]
    tau = draws(posterior, "1|g_sigma")
    counted = data.groupby("g")["b"].agg(["sum", "size"])
    for i, level in enumerate(levels(model)):
        k, n = counted.loc[level]
        if k in (0, n):
            assert np.isnan(own.estimate[i, 0]) and np.isnan(own.pooling[i, 0])
            continue
        assert own.estimate[i, 0] == pytest.approx(np.log(k / (n - k)), abs=1e-12)
        se2 = 1 / k + 1 / (n - k)
        assert own.se[i, 0] == pytest.approx(np.sqrt(se2), rel=1e-12)
        assert own.pooling[i, 0] == pytest.approx(np.mean(se2 / (se2 + tau**2)), rel=1e-12)
    assert np.isnan(own.estimate[levels(model).index("g7"), 0])


@pytest.mark.parametrize(
    ("formula", "family", "link"),
    [("b ~ x + (1 | g)", "bernoulli", "logit"), ("b ~ (1 | g)", "poisson", "log")],
)
def test_other_non_gaussian_models_get_nulls(formula: str, family: str, link: str) -> None:
    model, posterior = fit(formula, binary_data(), family, link)
    assert shrinkage(model, posterior) == {}
    for row in group_effects(model, posterior, "fit", "hdi", 0.94)["g"].levels:
        assert all(e.no_pooling is None and e.pooling_factor is None for e in row.effects)


def synthetic_posterior(model: bmb.Model, chains: int, draws: int) -> xr.Dataset:
    """Random draws with the shapes of ``model``'s posterior (no sampling)."""
    rng = np.random.default_rng(0)
    levels = len(model.parameters["mu"].group_specific_terms["1|g"].groups)
    sample = {"chain": np.arange(chains), "draw": np.arange(draws)}
    scalar = ("chain", "draw")
    per_level = ("chain", "draw", "g__factor_dim")

    def variable(dims: tuple[str, ...], scale: float = 1.0) -> tuple[tuple[str, ...], Any]:
        shape = (chains, draws, levels)[: len(dims)]
        return dims, np.abs(rng.normal(0, scale, shape)) + 0.1

    return xr.Dataset(
        {
            "Intercept": variable(scalar),
            "x": variable(scalar),
            "sigma": variable(scalar),
            "1|g_sigma": variable(scalar),
            "x|g_sigma": variable(scalar),
            "1|g": variable(per_level),
            "x|g": variable(per_level),
        },
        coords=sample,
    )


def test_two_thousand_levels_with_slopes_are_exact_and_fast() -> None:
    """10,000 rows in 2,000 levels with slopes, 4 chains x 1,000 draws (no sampling: the
    draws are made up; the sums over rows do not depend on them). Measured: 0.22 s."""
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(2000), 5)
    data = pd.DataFrame({"y": rng.normal(size=g.size), "x": rng.normal(size=g.size), "g": g})
    model = bmb.Model("y ~ x + (x | g)", data)
    posterior = synthetic_posterior(model, 4, 1000)
    started = time.perf_counter()
    result = shrinkage(model, posterior)
    elapsed = time.perf_counter() - started
    i = levels(model).index("1234")
    rows = (g == 1234).nonzero()[0]
    z = np.column_stack([np.ones(5), data["x"].to_numpy()[rows]])
    expected = np.linalg.lstsq(z, data["y"].to_numpy()[rows], rcond=None)[0]
    assert result["1|g"].estimate[i, 0] == pytest.approx(expected[0], abs=1e-9)
    assert result["x|g"].estimate[i, 0] == pytest.approx(expected[1], abs=1e-9)
    assert np.isfinite(result["x|g"].pooling).all()
    assert elapsed < 2.0, f"{elapsed:.2f} s"
