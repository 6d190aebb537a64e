"""``(1 + x | g)`` estimates the correlation of the intercept and the slope, as lme4,
rstanarm and brms do; separate terms ``(1 | g) + (0 + x | g)`` stay independent; the
``independent`` option gives Bambi's own model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytensor
import pytest
import xarray as xr
from scipy import stats

from service.api.validation import validate_fit_request
from service.core.errors import InvalidRequest
from service.core.group_blocks import Block, blocks_of
from service.core.schemas import FitRequest, FitSpec, PriorSpec, ResolvedSampler
from service.core.settings import Settings
from tests.support.reference import FOLDER, compare, load
from worker.modeling import parameterization
from worker.modeling.building import build_model, correlations_of, wanted_correlations
from worker.modeling.compiled import CompiledModels, lift
from worker.modeling.describe import describe
from worker.modeling.new_levels import NewLevels
from worker.modeling.sampling import sample
from worker.modeling.summaries import (
    diagnose,
    group_effects,
    parameter_roles,
    summarize,
    var_corr,
)

SAMPLER = ResolvedSampler(draws=500, tune=500, chains=2, seed=7, target_accept=0.8, method="nutpie")
#: The simulation: 60 groups of 20 rows, intercept sd 1.0, slope sd 0.5, correlation 0.6.
TRUE_SD = np.array([1.0, 0.5])
TRUE_CORR = 0.6


def simulated(groups: int = 60, per_group: int = 20, seed: int = 1) -> dict[str, list[Any]]:
    """y = 1 + 0.5 x + b_0g + b_1g x + e, (b_0g, b_1g) ~ MvNormal(0, Sigma), e ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per_group)
    x = rng.normal(size=g.size)
    corr = np.array([[1.0, TRUE_CORR], [TRUE_CORR, 1.0]])
    b = rng.multivariate_normal(np.zeros(2), TRUE_SD[:, None] * corr * TRUE_SD, size=groups)
    y = 1.0 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(size=g.size)
    return {"y": y.tolist(), "x": x.tolist(), "g": [f"g{i}" for i in g]}


def spec(formula: str, columns: dict[str, list[Any]], **kwargs: Any) -> FitSpec:
    return FitSpec(
        formula=formula,
        family="gaussian",
        link="identity",
        columns=columns,
        sampler=SAMPLER,
        **{"group_correlations": "estimate", **kwargs},
    )


def test_a_parenthesised_term_is_one_block_per_factor_and_separate_terms_are_not() -> None:
    assert blocks_of("y ~ x + (1 + x | g)") == [Block("g", ("1|g", "x|g"))]
    assert blocks_of("y ~ (x | g) + (1 | h)") == [Block("g", ("1|g", "x|g"))]
    assert blocks_of("y ~ x + (1 | g) + (0 + x | g)") == []
    assert blocks_of("y ~ (1 + x | g / h)") == [
        Block("g", ("1|g", "x|g")),
        Block("g:h", ("1|g:h", "x|g:h")),
    ]
    assert blocks_of("s ~ (1 + x | g)", prefix="s_") == [Block("g", ("s_1|g", "s_x|g"), "s_")]


def test_separate_terms_have_no_correlation_parameter() -> None:
    model = build_model(spec("y ~ x + (1 | g) + (0 + x | g)", simulated(6, 5)))
    model.build()
    names = {v.name for v in model.backend.model.free_RVs}
    assert not correlations_of(model).blocks
    assert not any(name.endswith("_corr_chol") for name in names)
    assert "group_corr" not in {role.kind for role in parameter_roles(model).values()}


def test_a_block_with_a_categorical_term_stays_independent_and_the_diagnostics_say_so() -> None:
    columns = simulated(6, 5)
    columns["a"] = ["u", "v", "w"] * 10
    model = build_model(spec("y ~ x + (1 + C(a) | g)", columns))
    result = sample(model, SAMPLER.model_copy(update={"draws": 100, "tune": 100}), lambda _: 0)
    assert not correlations_of(model).blocks
    diagnostics = diagnose(model, result.posterior, result.sample_stats, "fit")
    ((block, reason),) = diagnostics.left_independent.items()
    assert block.startswith("1|g:C(a)") and "more than one column" in reason
    assert any("estimated independently" in w and block in w for w in diagnostics.warnings)


def test_the_independent_option_gives_bambis_model() -> None:
    columns = simulated(6, 5)
    independent = build_model(
        spec("y ~ x + (1 + x | g)", columns, group_correlations="independent")
    )
    correlated = build_model(spec("y ~ x + (1 + x | g)", columns))
    for model in (independent, correlated):
        parameterization.apply(model, "noncentered")
        model.build()
    plain = {v.name for v in independent.backend.model.free_RVs}
    assert plain == {
        "Intercept",
        "x",
        "sigma",
        "1|g_sigma",
        "1|g_offset",
        "x|g_sigma",
        "x|g_offset",
    }
    assert {v.name for v in correlated.backend.model.free_RVs} == plain | {"1|g:x|g_corr_chol"}
    assert "1|g:x|g_corr" not in independent.backend.model.named_vars
    assert lift(independent).key != lift(correlated).key  # the rewrite is part of the structure


@pytest.mark.parametrize("form", ["noncentered", "centered"])
def test_the_log_density_is_the_multivariate_normal_of_the_group_effects(form: str) -> None:
    """At a random point, the rewritten model's log density (without Jacobians) equals an
    explicit computation with b_j ~ MvNormal(0, diag(s) R diag(s)), R ~ LKJ(eta = 2), once
    the change of variables is accounted for (to 1e-8). Non-centred, the model samples
    z_j with b_j = diag(s) L z_j: density MvNormal(b_j) |det(diag(s) L)|. Centred, it
    samples m_j = b_j + (Intercept, x): density MvNormal(b_j), unit Jacobian."""
    columns = simulated(6, 5)
    eta = 2.0
    priors = {"1|g:x|g_corr": PriorSpec(dist="LKJCorr", params={"eta": eta})}
    model = build_model(spec("y ~ x + (1 + x | g)", columns, priors=priors))
    parameterization.apply(model, form)
    model.build()
    pm_model = model.backend.model
    rng = np.random.default_rng(3)
    point = {k: rng.normal(size=np.shape(v)) for k, v in pm_model.initial_point().items()}
    values = pytensor.function(pm_model.value_vars, pm_model.unobserved_value_vars)(
        *[point[v.name] for v in pm_model.value_vars]
    )
    v = dict(zip([var.name for var in pm_model.unobserved_value_vars], values, strict=True))
    L = v["1|g:x|g_corr_chol"]
    s = np.array([v["1|g_sigma"], v["x|g_sigma"]])
    r = float(L[1, 0])
    sigma_cov = np.outer(s, s) * np.array([[1.0, r], [r, 1.0]])
    b = np.column_stack([v["1|g"], v["x|g"]])
    if form == "noncentered":
        z = np.column_stack([v["1|g_offset"], v["x|g_offset"]])
        np.testing.assert_allclose(b, z @ (s[:, None] * L).T, atol=1e-12)
        jacobian = 6 * np.log(np.abs(np.linalg.det(s[:, None] * L)))
    else:
        means = v["1|g:x|g_means"]
        np.testing.assert_allclose(b, means - [v["Intercept"], v["x"]], atol=1e-12)
        jacobian = 0.0

    terms = model.parameters["mu"].group_specific_terms
    scales = [float(terms[t].prior.args["sigma"].args["sigma"]) for t in ("1|g", "x|g")]
    intercept = model.parameters["mu"].intercept_term.prior.args
    slope = model.parameters["mu"].common_terms["x"].prior.args
    noise = model.parameters["sigma"].prior.args
    x, y = np.array(columns["x"]), np.array(columns["y"])
    level = np.repeat(np.arange(6), 5)
    mu = v["Intercept"] + v["x"] * (x - x.mean()) + b[level, 0] + b[level, 1] * x
    explicit = (
        stats.norm.logpdf(y, mu, v["sigma"]).sum()
        + stats.multivariate_normal(np.zeros(2), sigma_cov).logpdf(b).sum()
        + stats.beta.logpdf((r + 1) / 2, eta, eta)
        - np.log(2)  # LKJ(eta) for k = 2: (r + 1) / 2 ~ Beta(eta, eta)
        + sum(stats.halfnorm.logpdf(s_t, scale=c) for s_t, c in zip(s, scales, strict=True))
        + stats.norm.logpdf(v["Intercept"], intercept["mu"], intercept["sigma"])
        + stats.norm.logpdf(v["x"], slope["mu"], slope["sigma"])
        + np.log(2)
        + stats.t.logpdf(v["sigma"], df=noise["nu"], scale=noise["sigma"])
    )
    logp = pm_model.compile_logp(jacobian=False)(point)
    assert logp == pytest.approx(explicit + jacobian, abs=1e-8)


def test_the_correlation_of_a_simulated_intercept_and_slope_is_recovered() -> None:
    """60 groups x 20 rows, true correlation 0.6: the posterior mean is within 0.25 of it
    and its 90% interval covers it; the summary lists it as ``group_corr`` with its MCSE,
    the diagnostics cover it, and the fit says how it was sampled."""
    fit_spec = spec("y ~ x + (1 + x | g)", simulated())
    model = build_model(fit_spec)
    choice = parameterization.apply(model, "auto")
    result = sample(model, SAMPLER, lambda progress: None)
    draws = result.posterior["1|g:x|g_corr"].values.ravel()
    assert abs(draws.mean() - TRUE_CORR) < 0.25
    assert np.quantile(draws, 0.05) < TRUE_CORR < np.quantile(draws, 0.95)
    assert float(result.posterior["1|g_sigma"].mean()) == pytest.approx(1.0, abs=0.3)
    assert float(result.posterior["x|g_sigma"].mean()) == pytest.approx(0.5, abs=0.2)
    assert result.likelihood == "sufficient_statistics"
    assert (choice.parameterization, choice.centre_on_intercept) == ("centered", "1|g")
    sampled = {v.name for v in model.backend.model.free_RVs}
    assert "1|g:x|g_means" in sampled  # the block's level means, centred on (Intercept, x)

    summary = summarize(model, result.posterior, "fit", "eti", 0.9)
    (row,) = [p for p in summary.parameters if p.kind == "group_corr"]
    assert (row.name, row.term) == ("1|g:x|g_corr", "1|g:x|g")
    assert row.mean == pytest.approx(draws.mean())
    assert row.lower < TRUE_CORR < row.upper
    assert 0 < row.mcse_mean < 0.05
    varcorr = group_effects(model, result.posterior, "fit", "eti", 0.9)["g"]
    assert varcorr.terms == ["1|g", "x|g"]
    assert [e.mean for e in varcorr.sd if e] == pytest.approx(
        [float(result.posterior[f"{t}_sigma"].mean()) for t in varcorr.terms]
    )
    assert varcorr.corr[0][1] == varcorr.corr[1][0]
    assert varcorr.corr[0][1] is not None and varcorr.corr[0][1].mean == pytest.approx(row.mean)
    assert varcorr.corr[0][0] is not None and varcorr.corr[0][0].mean == 1.0
    diagnostics = diagnose(model, result.posterior, result.sample_stats, "fit")
    (checked,) = [p for p in diagnostics.parameters if p.name == "1|g:x|g_corr"]
    assert checked.r_hat < 1.05
    assert checked.ess_bulk > 100


def test_the_correlated_radon_model_matches_brms() -> None:
    """log_radon ~ floor_measure + (1 + floor_measure | county) on Minnesota's radon data,
    against brms (Stan, 20,000 draws; tests/reference/brms_references.R) with the same
    priors: every mean within 0.1 reference sd (or 3 Monte Carlo SEs), every sd within 15%,
    the correlation (brms: -0.26, sd 0.38) included."""
    data, _ = load("radon_mn_variable_intercept_slope")
    reference = json.loads((FOLDER / "radon_mn_correlated.reference.json").read_text())["params"]
    columns = {
        "log_radon": data["log_radon"],
        "floor_measure": data["floor_measure"],
        "county": [str(c) for c in data["county_idx"]],
    }
    half_normal = PriorSpec(dist="HalfNormal", params={"sigma": 1.0})
    group = PriorSpec(dist="Normal", params={"mu": 0.0, "sigma": half_normal})
    priors = {
        "Intercept": PriorSpec(dist="Normal", params={"mu": 0.0, "sigma": 10.0}),
        "floor_measure": PriorSpec(dist="Normal", params={"mu": 0.0, "sigma": 10.0}),
        "1|county": group,
        "floor_measure|county": group,
        "sigma": half_normal,
        "1|county:floor_measure|county_corr": PriorSpec(dist="LKJCorr", params={"eta": 1.0}),
    }
    formula = "log_radon ~ floor_measure + (1 + floor_measure | county)"
    model = build_model(spec(formula, columns, priors=priors))
    sampler = SAMPLER.model_copy(update={"draws": 1000, "tune": 1000, "chains": 4})
    result = sample(model, sampler, lambda progress: None, centre_on=None, cores=2)
    estimates: dict[str, dict[str, float]] = {
        p.name: p.model_dump()
        for p in summarize(model, result.posterior, "fit", "eti", 0.9).parameters
    }
    for level in group_effects(model, result.posterior, "fit", "eti", 0.9)["county"].levels:
        for effect in level.effects:
            fixed = "Intercept" if effect.term.startswith("1|") else effect.term.split("|")[0]
            assert effect.coef is not None
            estimates[f"{fixed} + {effect.term}[{level.level}]"] = effect.coef.model_dump()
    rows = compare(estimates, reference)
    corr = estimates["1|county:floor_measure|county_corr"]
    print(
        f"radon correlated: corr {corr['mean']:.3f} (sd {corr['sd']:.3f}), max z "
        f"{max(r.z for r in rows):.3f}, sd ratios {min(r.ratio for r in rows):.3f}-"
        f"{max(r.ratio for r in rows):.3f}, sampling {result.sampling_s:.1f} s"
    )
    assert len(rows) == len(reference) == 24
    assert [row for row in rows if not row.agrees()] == []
    assert [row for row in rows if abs(row.ratio - 1) > 0.15] == []


def test_a_new_groups_intercept_and_slope_carry_the_posterior_correlation() -> None:
    """brms' sample_new_levels = "gaussian": each new level draws (b_0, b_1) from
    MvNormal(0, Sigma) draw by draw. Posterior draws with SDs (1, 0.5) and correlations
    spread over 0.3-0.9 (mean 0.6): over 200 new levels x 2,000 draws the sample
    correlation is the mean correlation (within 0.02), and the SDs are (1, 0.5) (2%). The
    population (VarCorr) has that correlation; without it, the terms have none."""
    model = build_model(spec("y ~ x + (1 + x | g)", simulated(6, 5)))
    terms = model.parameters["mu"].group_specific_terms
    rng = np.random.default_rng(11)
    draws, old_levels, new = 2000, 6, 200
    corr_draws = rng.uniform(0.3, 0.9, size=(1, draws))
    effects = rng.normal(size=(1, draws, old_levels))
    posterior = xr.Dataset(
        {
            "1|g": (("chain", "draw", "g__factor_dim"), effects),
            "x|g": (("chain", "draw", "g__factor_dim"), effects),
            "1|g_sigma": (("chain", "draw"), np.full((1, draws), TRUE_SD[0])),
            "x|g_sigma": (("chain", "draw"), np.full((1, draws), TRUE_SD[1])),
            "1|g:x|g_corr": (("chain", "draw"), corr_draws),
        }
    )
    labels = pd.DataFrame({"g": [f"new{i}" for i in range(new)]})
    rows = np.arange(new)
    levels = NewLevels(posterior, seed=5)
    b0, _ = levels.for_rows(terms["1|g"], "g", labels, rows, 1)
    b1, _ = levels.for_rows(terms["x|g"], "g", labels, rows, 1)
    pairs = np.column_stack([b0.ravel(), b1.ravel()])
    assert np.corrcoef(pairs.T)[0, 1] == pytest.approx(corr_draws.mean(), abs=0.02)
    np.testing.assert_allclose(pairs.std(axis=0), TRUE_SD, rtol=0.02)
    sd, corr = var_corr(["1|g", "x|g"], posterior, "eti", 0.9)
    assert [e.mean for e in sd if e] == pytest.approx(TRUE_SD)
    assert corr[0][1] is not None and corr[0][1].mean == pytest.approx(corr_draws.mean())
    _, independent = var_corr(["1|g", "x|g"], posterior.drop_vars("1|g:x|g_corr"), "eti", 0.9)
    assert independent[0][1] is None and independent[1][0] is None  # not estimated: no value
    alone = NewLevels(posterior.drop_vars("1|g:x|g_corr"), seed=5)
    intercept_alone, _ = alone.for_rows(terms["1|g"], "g", labels, rows, 1)
    slope_alone, _ = alone.for_rows(terms["x|g"], "g", labels, rows, 1)
    np.testing.assert_array_equal(b0, intercept_alone)  # the block's first term: as alone
    assert abs(np.corrcoef(intercept_alone.ravel(), slope_alone.ravel())[0, 1]) < 0.01


def test_requests_estimate_correlations_by_default_and_take_an_lkj_prior() -> None:
    data = {"y": [1.0, 2.5, 3.0, 4.5, 2.0, 3.5], "x": [0.5, 1, 1.5, 2, 2.5, 3], "g": list("abcabc")}
    lkj = {"dist": "LKJCorr", "params": {"eta": 2.0}}

    def validated(**fields: Any) -> FitSpec:
        request = FitRequest.model_validate({"data": data, "formula": "y ~ (1 + x | g)"} | fields)
        return validate_fit_request(request, Settings())[0]

    assert validated().group_correlations == "estimate"
    assert validated(group_correlations="independent").group_correlations == "independent"
    fit_spec = validated(priors={"1|g:x|g_corr": lkj})
    assert fit_spec.priors["1|g:x|g_corr"].params == {"eta": 2.0}
    refusals = [
        ({"priors": {"1|g:x|g_corr": {"dist": "Normal", "params": {"mu": 0, "sigma": 1}}}}, ""),
        ({"priors": {"1|g:x|g_corr": {"dist": "LKJCorr", "params": {"eta": 0}}}}, ".eta"),
        ({"priors": {"1|g:x|g_corr": lkj}, "group_correlations": "independent"}, ""),
        ({"priors": {"1|g:x|g_corr": lkj}, "formula": "y ~ (1 | g) + (0 + x | g)"}, ""),
    ]
    for fields, suffix in refusals:
        with pytest.raises(InvalidRequest) as caught:
            validated(**fields)
        assert caught.value.errors[0].field == f"priors.1|g:x|g_corr{suffix}"
    assert wanted_correlations(fit_spec).eta == {"1|g:x|g": 2.0}


def test_a_refit_with_another_lkj_eta_reuses_the_compiled_model_and_feeds_it_eta() -> None:
    """eta is an input of the compiled model, not its structure: a second fit with eta 500
    reuses the first one's compiled model, and its prior pulls the correlation (0.6 with
    eta 1) towards 0 (the LKJ(500) prior alone has sd 0.03)."""
    columns = simulated()
    cache = CompiledModels(size=2)
    means, reused = [], []
    for eta in (1.0, 500.0):
        priors = {"1|g:x|g_corr": PriorSpec(dist="LKJCorr", params={"eta": eta})}
        model = build_model(spec("y ~ x + (1 + x | g)", columns, priors=priors))
        parameterization.apply(model, "auto")
        result = sample(model, SAMPLER, lambda progress: None, compiled_models=cache)
        means.append(float(result.posterior["1|g:x|g_corr"].mean()))
        reused.append(not result.compiled_now)
    assert reused == [False, True]
    assert means[0] > 0.4
    assert abs(means[1]) < 0.1


def test_the_dry_run_lists_the_lkj_prior_and_counts_one_free_correlation() -> None:
    """6 groups: Intercept, x, sigma, two SDs, 2 x 6 offsets and one correlation = 18."""
    priors = {"1|g:x|g_corr": PriorSpec(dist="LKJCorr", params={"eta": 4.0})}
    model = build_model(spec("y ~ x + (1 + x | g)", simulated(6, 5), priors=priors))
    parameterization.apply(model, "noncentered")
    description = describe(model)
    assert description.n_parameters == 18
    lkj = [p for p in description.priors if p.dist == "LKJCorr"]
    assert [(p.term, p.kind, p.params) for p in lkj] == [("1|g:x|g_corr", "group", {"eta": 4.0})]
    assert {p.term for p in description.priors} >= {"1|g", "x|g"}  # each SD's own prior
