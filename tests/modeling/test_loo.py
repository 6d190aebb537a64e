"""PSIS-LOO of a fit: each family's log likelihood is Bambi's, the totals are ArviZ's
``loo`` on the same draws, chunking changes no number, rows are named as the client sent
them, and comparisons are ArviZ's ``compare`` with a verdict in words. The LOO-PIT is the
PSIS-weighted predictive CDF (each family's CDF is scipy's), uniform for a right model and
far from it for a wrong one."""

from __future__ import annotations

from functools import cache

import arviz_stats
import bambi as bmb
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from service.core.schemas import FitSpec, ResolvedSampler
from tests.conftest import SEED_CSV
from tests.support.synthetic import LINKS, formula_for, grouped
from worker.derived import compare
from worker.modeling import loo as loo_module
from worker.modeling.building import build_model, frame
from worker.modeling.cache import FittedModel
from worker.modeling.log_density import (
    CDFS,
    DENSITIES,
    _observed,
    _through_bambi,
    log_likelihood,
)
from worker.modeling.loo import PointwiseLoo, loo_pit_uniformity, loo_result, pointwise_loo
from worker.modeling.prediction import fitted_parameters
from worker.modeling.sampling import sample

SAMPLER = ResolvedSampler(draws=200, tune=200, chains=2, seed=5, target_accept=0.9, method="nutpie")


def spec_of(formula: str, columns: dict[str, list[object]], family: str = "gaussian") -> FitSpec:
    link = LINKS.get(family) or {"bernoulli": "logit", "binomial": "logit"}.get(family)
    return FitSpec(
        formula=formula,
        family=family,
        link=link or {"beta": "logit", "t": "identity"}.get(family, "identity"),
        columns=columns,  # type: ignore[arg-type]
        sampler=SAMPLER,
    )


@cache
def seed_fit(formula: str) -> FittedModel:
    """A small fit of the seed study (484 students, 20 schools)."""
    data = pd.read_csv(SEED_CSV)
    spec = spec_of(formula, {"school": data.school.tolist(), "score": data.score.tolist()})
    model = build_model(spec)
    result = sample(model, SAMPLER, lambda _: None)
    return FittedModel(spec, model, result.posterior, result.sample_stats)


@pytest.mark.parametrize("family", sorted(DENSITIES))
def test_each_familys_log_likelihood_is_bambis(family: str) -> None:
    """Prior draws stand in for a posterior: every parameter value is a valid one."""
    spec = spec_of(formula_for(family), grouped(family), family)
    model = build_model(spec)
    model.build()
    prior = model.prior_predictive(draws=60, random_seed=1).prior.to_dataset()
    params = [v for v in prior.data_vars if "__obs__" not in prior[v].dims]
    posterior = prior[params]
    data = frame(spec.columns, spec)
    extended = fitted_parameters(model, posterior, data)
    ours = log_likelihood(model, extended, data, family)
    bambis = _through_bambi(model, extended, data)
    assert ours.shape == bambis.shape == (1, 60, len(data))
    np.testing.assert_allclose(ours, bambis, rtol=1e-9, atol=1e-9)


def scipy_cdf(family: str, p: dict[str, np.ndarray]) -> stats.rv_continuous | stats.rv_discrete:
    """Each family's distribution in scipy, in PyMC's parameterisation."""
    if family == "gaussian":
        return stats.norm(p["mu"], p["sigma"])
    if family == "t":
        return stats.t(p["nu"], p["mu"], p["sigma"])
    if family == "bernoulli":
        return stats.bernoulli(p["p"])
    if family == "binomial":
        return stats.binom(p["n"], p["p"])
    if family == "poisson":
        return stats.poisson(p["mu"])
    if family == "negativebinomial":
        return stats.nbinom(p["alpha"], p["alpha"] / (p["mu"] + p["alpha"]))
    if family == "gamma":
        return stats.gamma(p["alpha"], scale=p["mu"] / p["alpha"])
    return stats.beta(p["mu"] * p["kappa"], (1 - p["mu"]) * p["kappa"])


@pytest.mark.parametrize("family", sorted(CDFS))
def test_each_familys_predictive_cdf_is_scipys(family: str) -> None:
    spec = spec_of(formula_for(family), grouped(family), family)
    model = build_model(spec)
    model.build()
    prior = model.prior_predictive(draws=30, random_seed=2).prior.to_dataset()
    posterior = prior[[v for v in prior.data_vars if "__obs__" not in prior[v].dims]]
    data = frame(spec.columns, spec)
    y, params = _observed(model, fitted_parameters(model, posterior, data), data, family)
    below, at_most = CDFS[family](y, params)
    dist = scipy_cdf(family, params)
    np.testing.assert_allclose(at_most, dist.cdf(y), rtol=1e-7, atol=1e-10)
    discrete = family in ("bernoulli", "binomial", "poisson", "negativebinomial")
    np.testing.assert_allclose(below, dist.cdf(y - 1) if discrete else dist.cdf(y), atol=1e-10)


def test_the_loo_pit_is_the_psis_weighted_predictive_cdf() -> None:
    fit = seed_fit("score ~ (1 | school)")
    data = frame(fit.spec.columns, fit.spec)
    values = pointwise_loo(fit.model, fit.posterior, data, "gaussian")
    extended = fitted_parameters(fit.model, fit.posterior, data)
    log_lik = xr.DataArray(
        log_likelihood(fit.model, extended, data, "gaussian"), dims=("chain", "draw", "obs")
    )
    r_eff = loo_module.relative_efficiency(fit.posterior)
    log_weights, _ = log_lik.azstats.psislw(r_eff=r_eff, dim=["chain", "draw"])
    weights = np.exp(log_weights - log_weights.max(dim=["chain", "draw"]))
    weights = weights / weights.sum(dim=["chain", "draw"])
    y, params = _observed(fit.model, extended, data, "gaussian")
    cdf = stats.norm(params["mu"], params["sigma"]).cdf(y)
    expected = (weights.transpose("chain", "draw", "obs").values * cdf).sum(axis=(0, 1))
    assert values.pit is not None
    np.testing.assert_allclose(values.pit, expected, atol=1e-9)
    # the right model for these data: uniform within the noise of 484 values
    uniformity = loo_pit_uniformity(values.pit)
    assert uniformity.calibrated, uniformity
    assert uniformity.threshold == pytest.approx(1.358 / np.sqrt(484))


def test_a_gaussian_fit_to_skewed_data_has_uncalibrated_loo_pit() -> None:
    rng = np.random.default_rng(11)
    y = np.exp(rng.normal(0.0, 1.0, size=300))  # log-normal: long right tail
    spec = spec_of("y ~ 1", {"y": y.tolist()})
    model = build_model(spec)
    result = sample(model, SAMPLER, lambda _: None)
    values = pointwise_loo(model, result.posterior, frame(spec.columns, spec), "gaussian")
    assert values.pit is not None
    uniformity = loo_pit_uniformity(values.pit)
    assert not uniformity.calibrated, uniformity
    assert uniformity.ks_distance > 2 * uniformity.threshold
    assert "not calibrated" in uniformity.verdict


def test_the_totals_are_arviz_loo_on_the_same_draws() -> None:
    fit = seed_fit("score ~ (1 | school)")
    data = frame(fit.spec.columns, fit.spec)
    values = pointwise_loo(fit.model, fit.posterior, data, "gaussian")
    log_lik = log_likelihood(
        fit.model, fitted_parameters(fit.model, fit.posterior, data), data, "gaussian"
    )
    tree = xr.DataTree.from_dict(
        {
            "posterior": fit.posterior,
            "log_likelihood": xr.Dataset({"score": (("chain", "draw", "__obs__"), log_lik)}),
        }
    )
    reference = arviz_stats.loo(tree, pointwise=True)
    result = loo_result("fit", values, [])
    assert result.elpd_loo == pytest.approx(reference.elpd, abs=1e-6)
    assert result.se == pytest.approx(reference.se, abs=1e-6)
    assert result.p_loo == pytest.approx(reference.p, abs=1e-6)
    assert result.looic == pytest.approx(-2 * reference.elpd, abs=1e-6)
    np.testing.assert_allclose(values.pareto_k, reference.pareto_k.values, atol=1e-9)
    np.testing.assert_allclose(values.elpd, reference.elpd_i.values, atol=1e-9)
    # the seed study's partial pooling model (in-process Bambi: about -1218)
    assert -1235 < result.elpd_loo < -1200
    assert sum(result.pareto_k.model_dump().values()) == result.n_obs == 484


def test_chunks_of_rows_change_no_number(monkeypatch: pytest.MonkeyPatch) -> None:
    fit = seed_fit("score ~ (1 | school)")
    data = frame(fit.spec.columns, fit.spec)
    whole = pointwise_loo(fit.model, fit.posterior, data, "gaussian")
    monkeypatch.setattr(loo_module, "rows_per_chunk", lambda model, posterior: 7)
    monkeypatch.setattr(loo_module, "CHUNK_SCALE", 1)
    chunked = pointwise_loo(fit.model, fit.posterior, data, "gaussian")
    np.testing.assert_array_equal(whole.elpd, chunked.elpd)
    np.testing.assert_array_equal(whole.pareto_k, chunked.pareto_k)


def test_unreliable_rows_are_named_as_the_client_sent_them() -> None:
    """Rows 1 and 4 of what was sent were incomplete and dropped: fitted row 2 is row 3."""
    k = np.array([0.1, 0.6, 0.95, 1.3, 0.2])
    values = PointwiseLoo(np.full(5, -1.0), np.full(5, 0.1), k, n_samples=4000)
    result = loo_result("fit", values, dropped_rows=[1, 4])
    assert result.pareto_k.model_dump() == {"good": 2, "ok": 1, "bad": 1, "very_bad": 1}
    assert [(r.row, r.k) for r in result.influential_rows] == [(5, 1.3), (3, 0.95)]
    assert result.warning is not None and "2 rows" in result.warning


def test_pointwise_values_survive_storage() -> None:
    values = PointwiseLoo(np.array([-1.5, -2.0]), np.array([0.1, 0.2]), np.array([0.3, 0.9]), 800)
    back = PointwiseLoo.from_bytes(values.to_bytes())
    assert back.n_samples == 800
    np.testing.assert_array_equal(back.pareto_k, values.pareto_k)
    assert back.pit is None
    with_pit = PointwiseLoo(values.elpd, values.p_loo, values.pareto_k, 800, np.array([0.2, 0.7]))
    np.testing.assert_array_equal(PointwiseLoo.from_bytes(with_pit.to_bytes()).pit, [0.2, 0.7])
    with pytest.raises(ValueError):
        PointwiseLoo.from_bytes(np.arange(3.0).tobytes())


def test_the_seed_studys_pooling_models_compare_as_the_argument_goes() -> None:
    """Complete pooling predicts far worse; partial and no pooling are not distinguishable."""
    fits = {
        name: seed_fit(formula)
        for name, formula in {
            "complete": "score ~ 1",
            "none": "score ~ 0 + C(school)",
            "partial": "score ~ (1 | school)",
        }.items()
    }
    values = {}
    for name, fit in fits.items():
        data = frame(fit.spec.columns, fit.spec)
        values[name] = (fit, pointwise_loo(fit.model, fit.posterior, data, "gaussian"))
    comparison = compare(values)
    ranked = [m.fit_id for m in comparison.models]
    assert ranked[-1] == "complete"
    last = comparison.models[-1]
    assert -last.elpd_diff > 10 * last.se_diff > 0  # in-process: about -1512 vs -1218
    assert abs(comparison.models[1].elpd_diff) < 2 * comparison.models[1].se_diff
    assert sum(m.weight for m in comparison.models) == pytest.approx(1.0)
    assert "not distinguishable" in comparison.verdict
    assert "predicts worse" in comparison.verdict and "score ~ 1" in comparison.verdict
    reference = arviz_stats.compare({k: v[1].elpd_data() for k, v in values.items()})
    assert list(reference.index) == ranked
    assert isinstance(fits["partial"].model, bmb.Model)
