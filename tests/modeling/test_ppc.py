"""Posterior predictive checks: a wrong model gets extreme p-values, a right one does not;
observed statistics are numpy's on the data; the numbers depend on the seed alone.

Observed statistics are compared with numpy's (or pandas' group proportions) on the data
exactly: both are the same reductions of the same values. The fits are small (2 chains x
200 draws, seeded) and shared by the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from service.core.errors import InvalidRequest
from service.core.schemas import FitSpec, Ppc, PpcStatName, ResolvedSampler, Scalar
from tests.conftest import SEED_CSV
from tests.support.synthetic import grouped
from worker.modeling import ppc
from worker.modeling.building import build_model, frame
from worker.modeling.ppc import posterior_predictive_check
from worker.modeling.prediction import fitted_parameters
from worker.modeling.sampling import sample

SAMPLER = ResolvedSampler(draws=200, tune=200, chains=2, seed=5, target_accept=0.8, method="nutpie")
LINKS = {"gaussian": "identity", "negativebinomial": "log", "poisson": "log"}
STATS: list[PpcStatName] = ["mean", "sd", "min", "max", "median", "q05", "q95"]
NUMPY: dict[str, Callable[[np.ndarray], Any]] = {
    "mean": np.mean,
    "sd": lambda y: np.std(y, ddof=1),
    "min": np.min,
    "max": np.max,
    "median": np.median,
    "q05": lambda y: np.quantile(y, 0.05),
    "q95": lambda y: np.quantile(y, 0.95),
}


class Fit:
    """A fitted model, its posterior and the rows it was fitted on."""

    def __init__(self, formula: str, columns: dict[str, list[Scalar]], family: str) -> None:
        spec = FitSpec(
            formula=formula,
            family=family,
            link=LINKS.get(family, "logit"),
            columns=columns,
            sampler=SAMPLER,
        )
        self.family = family
        self.model: bmb.Model = build_model(spec)
        self.posterior: xr.Dataset = sample(self.model, SAMPLER, lambda _: None).posterior
        self.data = frame(columns, spec)

    def check(self, stat: PpcStatName = "mean", by: str | None = None, **options: Any) -> Ppc:
        settings: dict[str, Any] = {"prob": 0.9, "interval_kind": "eti", "seed": 7}
        return posterior_predictive_check(
            self.model,
            self.posterior,
            self.data,
            family=self.family,
            stat=stat,
            by=by,
            fit_id="fit",
            **(settings | options),
        )


@cache
def seed_study() -> Fit:
    data = pd.read_csv(SEED_CSV)
    columns = {"school": data["school"].tolist(), "score": data["score"].tolist()}
    return Fit("score ~ (1 | school)", columns, "gaussian")


def skewed_counts() -> dict[str, list[Scalar]]:
    """300 negative binomial counts, mean 2 and size 0.5: 45% zeros and a long right tail."""
    rng = np.random.default_rng(21)
    return {"y": rng.negative_binomial(0.5, 0.5 / 2.5, 300).tolist()}


@cache
def counts(family: str) -> Fit:
    return Fit("y ~ 1", skewed_counts(), family)


@cache
def binary() -> Fit:
    """Bernoulli responses in 8 groups, and a column ``half`` the model does not use."""
    columns = grouped("bernoulli")
    columns["half"] = ["a" if i % 2 else "b" for i in range(len(columns["y"]))]
    return Fit("y ~ x + (1 | g)", columns, "bernoulli")


@cache
def binomial() -> Fit:
    return Fit("p(y, n) ~ x + (1 | g)", grouped("binomial"), "binomial")


@cache
def ordinal() -> Fit:
    return Fit("y ~ x + (1 | g)", grouped("cumulative"), "cumulative")


@pytest.mark.parametrize("stat", ["min", "q05"])
def test_a_gaussian_fit_to_skewed_counts_gets_an_extreme_p_value_and_a_count_model_does_not(
    stat: PpcStatName,
) -> None:
    wrong = counts("gaussian").check(stat).overall
    right = counts("negativebinomial").check(stat).overall
    assert wrong.observed == right.observed == 0.0
    assert wrong.p_value < 0.01  # every replicate's min (q05) is below the data's 0
    assert wrong.replicated.upper < 0
    assert 0.1 < right.p_value < 0.9  # 0 in the data and (nearly) every replicate: ties
    assert right.replicated.lower == 0


def test_the_sd_of_overdispersed_counts_condemns_a_poisson_model_not_a_negative_binomial() -> None:
    assert counts("poisson").check("sd").overall.p_value < 0.01
    assert 0.05 < counts("negativebinomial").check("sd").overall.p_value < 0.95


@pytest.mark.parametrize("stat", STATS)
def test_the_observed_statistic_is_numpys_on_the_data_overall_and_per_level(
    stat: PpcStatName,
) -> None:
    fit = seed_study()
    result = fit.check(stat, by="school")
    score = fit.data["score"].to_numpy()
    assert result.overall.observed == NUMPY[stat](score)
    school = fit.data["school"].astype(str).to_numpy()
    for level in result.levels:
        assert level.observed == NUMPY[stat](score[school == level.level])


def test_every_school_gets_its_own_check_and_their_rows_add_up_to_the_data() -> None:
    result = seed_study().check("sd", by="school")
    assert result.by == "school" and result.n_levels == 20
    assert [level.level for level in result.levels] == [str(i) for i in range(1, 21)]
    assert sum(level.n_obs for level in result.levels) == result.n_obs == 484
    assert result.n_draws == 400
    for level in [result.overall, *result.levels]:
        assert 0 <= level.p_value <= 1
        assert level.replicated.lower < level.replicated.mean < level.replicated.upper


def test_a_bernoulli_models_observed_proportion_per_level_is_the_datas() -> None:
    fit = binary()
    y = fit.data["y"]
    for by in ("g", "half"):  # a grouping factor, a column the model does not use
        result = fit.check("mean", by=by)
        proportions = y.groupby(fit.data[by]).mean()
        assert {level.level: level.observed for level in result.levels} == proportions.to_dict()
        assert [level.n_obs for level in result.levels] == y.groupby(fit.data[by]).size().tolist()
    assert result.overall.observed == y.mean()
    assert result.statistic == "proportion of successes"
    assert 0.1 < result.overall.p_value < 0.9


def test_a_binomial_models_proportion_per_level_is_its_successes_over_its_trials() -> None:
    fit = binomial()
    result = fit.check("mean", by="g")
    totals = fit.data.groupby("g")[["y", "n"]].sum()
    assert [level.observed for level in result.levels] == (totals["y"] / totals["n"]).tolist()
    assert result.overall.observed == fit.data["y"].sum() / fit.data["n"].sum()
    assert result.statistic == "proportion of successes (successes / trials)"
    assert all(0.05 < level.p_value < 0.95 for level in [result.overall, *result.levels])


def test_a_binary_response_refuses_statistics_other_than_its_proportion() -> None:
    with pytest.raises(InvalidRequest) as caught:
        binary().check("sd")
    assert caught.value.errors[0].field == "stat"
    assert "stat=mean" in caught.value.errors[0].message


def test_an_ordinal_response_compares_the_proportion_of_each_category() -> None:
    fit = ordinal()
    result = fit.check("median")
    positions = fit.data["y"].cat.codes.to_numpy()
    assert result.overall.observed == np.median(positions)
    assert result.categories is not None
    assert [c.category for c in result.categories] == ["0", "1", "2", "3"]
    assert [c.observed for c in result.categories] == [np.mean(positions == k) for k in range(4)]
    assert sum(c.replicated.mean for c in result.categories) == pytest.approx(1, abs=1e-12)
    assert all(0.05 < c.p_value < 0.95 for c in result.categories)


def test_ordinal_responses_are_drawn_with_the_fitted_category_probabilities() -> None:
    """The categories are drawn here, not by Bambi: over 400 draws x 200 rows each
    category's replicated proportion is its mean fitted probability, within 0.01 (the
    Monte Carlo sd is below 0.002)."""
    fit = ordinal()
    result = fit.check("mean")
    extended = fitted_parameters(fit.model, fit.posterior, fit.data)
    probabilities = extended["p"].mean(("chain", "draw", "__obs__")).values
    assert result.categories is not None
    replicated = [c.replicated.mean for c in result.categories]
    assert replicated == pytest.approx(probabilities.tolist(), abs=0.01)


def test_the_same_seed_gives_the_same_numbers_and_another_seed_others() -> None:
    fit = seed_study()
    first = fit.check("q95", by="school", seed=3)
    assert fit.check("q95", by="school", seed=3) == first
    other = fit.check("q95", by="school", seed=4)
    assert other.overall.observed == first.overall.observed
    assert other.overall.replicated.mean != first.overall.replicated.mean


def test_chunks_of_one_block_give_the_numbers_of_one_chunk_per_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fit = seed_study()
    monkeypatch.setattr(ppc, "DRAW_BLOCK_VALUES", 484 * 25)  # blocks of 25 draws
    monkeypatch.setattr(ppc, "CHUNK_BUDGET_BYTES", 2**40)
    assert ppc.chunk_draws(fit.model, fit.posterior, 484) >= 200
    whole = [fit.check(stat, by="school") for stat in ("mean", "q05")]
    monkeypatch.setattr(ppc, "CHUNK_BUDGET_BYTES", 1)
    assert ppc.chunk_draws(fit.model, fit.posterior, 484) == 25
    assert [fit.check(stat, by="school") for stat in ("mean", "q05")] == whole


def test_at_most_max_levels_are_reported_those_with_the_most_rows_in_the_factors_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fit = seed_study()
    monkeypatch.setattr(ppc, "MAX_LEVELS", 5)
    result = fit.check("mean", by="school")
    sizes = fit.data["school"].astype(str).value_counts()
    largest = sizes.sort_values(ascending=False, kind="stable").index[:5]
    assert result.n_levels == 20
    assert [level.level for level in result.levels] == sorted(largest, key=int)
    assert [level.n_obs for level in result.levels] == [sizes[s] for s in sorted(largest, key=int)]


def test_a_by_that_is_neither_a_factor_nor_a_column_is_refused_naming_by() -> None:
    with pytest.raises(InvalidRequest) as caught:
        seed_study().check("mean", by="classroom")
    assert caught.value.errors[0].field == "by"
    assert "school" in caught.value.errors[0].message


def test_a_check_replicates_from_at_most_a_thousand_draws() -> None:
    """Its cost is rows x draws: long fits are thinned evenly in every chain."""
    from worker.modeling.ppc import MAX_DRAWS, thinned

    posterior = xr.Dataset(
        {"a": (("chain", "draw"), np.arange(4 * 2500.0).reshape(4, 2500))},
        coords={"chain": np.arange(4), "draw": np.arange(2500)},
    )
    kept = thinned(posterior, MAX_DRAWS)
    assert kept.sizes == {"chain": 4, "draw": 250}
    assert kept["a"].values[0, :3].tolist() == [0.0, 10.0, 20.0]
    assert thinned(posterior.isel(draw=slice(0, 200)), MAX_DRAWS).sizes["draw"] == 200
