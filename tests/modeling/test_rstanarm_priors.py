"""rstanarm's default priors (``prior_defaults: "rstanarm"``), built without sampling: the
priors equal what rstanarm's ``prior_summary`` reported on the same data (the reference
files of ``tests/reference/rstanarm_references.R``), and the group SDs are rstanarm's decov:
``sigma * tau`` for one gaussian term, ``sigma * tau * sqrt(p * pi_k)`` for a block."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from service.api.validation import validate_fit_request
from service.core.schemas import FitRequest
from service.core.settings import Settings
from tests.support.reference import FOLDER, load
from worker.modeling.building import build_model
from worker.modeling.describe import priors_used

SAMPLER = {"draws": 100, "tune": 100, "chains": 1, "seed": 1}


def built(name: str, formula: str, **extra: Any) -> Any:
    data, _ = load(name)
    if "cbpp" in name:
        columns, family = data, "binomial"
    else:
        columns = {k: data[k] for k in ("log_radon", "floor_measure")}
        columns["county"] = [str(c) for c in data["county_idx"]]
        family = "gaussian"
    request = FitRequest.model_validate(
        {"data": columns, "formula": formula, "family": family, "prior_defaults": "rstanarm"}
        | {"sampler": SAMPLER}
        | extra
    )
    spec, _ = validate_fit_request(request, Settings())
    model = build_model(spec)
    model.build()
    return model


def rstanarm_priors(name: str) -> dict[str, Any]:
    reference = json.loads((FOLDER / f"{name}.reference.json").read_text())
    priors: dict[str, Any] = reference["priors"]
    return priors


@pytest.mark.parametrize(
    ("name", "formula", "coefficient"),
    [
        ("rstanarm_radon_gaussian", "log_radon ~ floor_measure + (1 | county)", "floor_measure"),
        ("rstanarm_cbpp_binomial", "p(incidence, size) ~ period + (1 | herd)", "period"),
    ],
)
def test_the_priors_are_the_ones_rstanarm_reported_on_the_same_data(
    name: str, formula: str, coefficient: str
) -> None:
    expected = rstanarm_priors(name)
    used = {p.term: p for p in priors_used(built(name, formula))}
    assert used["Intercept"].params["mu"] == pytest.approx(expected["intercept"]["location"][0])
    assert used["Intercept"].params["sigma"] == pytest.approx(expected["intercept"]["scale"])
    scales = np.atleast_1d(used[coefficient].params["sigma"])
    # each dummy of the categorical period is scaled by its own sd (about 5.7, where
    # Bambi's default gives a logit coefficient Normal(0, 1))
    assert scales == pytest.approx(expected["coefficients"]["scale"], rel=1e-12)
    if expected["aux_rate"]:
        assert used["sigma"].dist == "Exponential"
        assert used["sigma"].params["lam"] == pytest.approx(expected["aux_rate"])


def point(model: Any, **values: Any) -> dict[str, float]:
    """The model's deterministics at a point of its free variables (a random one else)."""
    pm_model = model.backend.model
    start = pm_model.initial_point(random_seed=3)
    start.update(values)
    outputs = {d.name: d for d in pm_model.deterministics}
    fn = pm_model.compile_fn(
        pm_model.replace_rvs_by_values(list(outputs.values())),
        inputs=pm_model.value_vars,
        point_fn=True,
        on_unused_input="ignore",
    )
    return dict(zip(outputs, (np.asarray(v) for v in fn(start)), strict=True))


def test_a_gaussian_group_sd_is_sigma_times_tau() -> None:
    model = built("rstanarm_radon_gaussian", "log_radon ~ floor_measure + (1 | county)")
    names = {v.name for v in model.backend.model.free_RVs}
    assert {"1|county_tau", "sigma"} <= names and "1|county_sigma" not in names
    at = point(model, **{"1|county_tau_log__": np.log(0.5), "sigma_log__": np.log(0.8)})
    assert float(at["1|county_sigma"]) == pytest.approx(0.5 * 0.8)


def test_a_binomial_group_sd_is_tau_alone() -> None:
    model = built("rstanarm_cbpp_binomial", "p(incidence, size) ~ period + (1 | herd)")
    at = point(model, **{"1|herd_tau_log__": np.log(0.7)})
    assert float(at["1|herd_sigma"]) == pytest.approx(0.7)


def test_a_correlated_block_shares_tau_through_a_simplex() -> None:
    formula = "log_radon ~ floor_measure + (1 + floor_measure | county)"
    model = built("rstanarm_radon_slopes", formula)
    block = "1|county:floor_measure|county"
    names = {v.name for v in model.backend.model.free_RVs}
    assert {f"{block}_tau", f"{block}_simplex", f"{block}_corr_chol"} <= names
    at = point(model)
    pm_model = model.backend.model
    variables = [pm_model[f"{block}_tau"], pm_model[f"{block}_simplex"], pm_model["sigma"]]
    values = pm_model.compile_fn(
        pm_model.replace_rvs_by_values(variables),
        inputs=pm_model.value_vars,
        point_fn=True,
        on_unused_input="ignore",
    )(pm_model.initial_point(random_seed=3))
    tau, simplex, sigma = (np.asarray(v) for v in values)
    sds = [float(at["1|county_sigma"]), float(at["floor_measure|county_sigma"])]
    assert sds == pytest.approx(list(sigma * tau * np.sqrt(2 * simplex)))
    # the sum of the variances is the trace rstanarm gives the block: 2 (sigma tau)^2
    assert sum(s**2 for s in sds) == pytest.approx(2 * (sigma * tau) ** 2)


def test_a_prior_the_request_sets_wins_over_rstanarms() -> None:
    sd_prior = {
        "dist": "Normal",
        "params": {"mu": 0, "sigma": {"dist": "HalfNormal", "params": {"sigma": 1}}},
    }
    model = built(
        "rstanarm_radon_gaussian",
        "log_radon ~ floor_measure + (1 | county)",
        priors={
            "1|county": sd_prior,
            "floor_measure": {"dist": "Normal", "params": {"mu": 0, "sigma": 1}},
        },
    )
    used = {p.term: p for p in priors_used(model)}
    assert used["1|county"].dist == "Normal"
    assert used["1|county"].params["sigma"]["dist"] == "HalfNormal"
    assert used["floor_measure"].params["sigma"] == 1
    assert used["sigma"].dist == "Exponential"  # the rest stays rstanarm's
    assert "1|county_sigma" in {v.name for v in model.backend.model.free_RVs}
