"""Correctness: four hierarchical problems whose posteriors were computed with Stan by
others, and one computed here with brms (the radon varying intercept and slope with their
correlation), fitted through the HTTP API with the priors sent in the request. Every reference
mean must be within 0.1 reference sd and every sd within 15%. A conjugate model checks an
exact posterior. A silent change in how requests map to Bambi fails here."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import wait_for_fit
from tests.support.reference import assert_reproduced, compare, fitted_estimates, load

pytestmark = pytest.mark.e2e

FULL = {"chains": 4, "draws": 1000, "tune": 1000, "seed": 1234}


def normal(mu: float, sigma: Any) -> dict[str, Any]:
    return {"dist": "Normal", "params": {"mu": mu, "sigma": sigma}}


def half_normal(sigma: float) -> dict[str, Any]:
    return {"dist": "HalfNormal", "params": {"sigma": sigma}}


def strings(values: list[Any]) -> list[str]:
    return [str(v) for v in values]


def problem(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request that states problem ``name`` exactly, and its reference."""
    data, reference = load(name)
    if name == "eight_schools_noncentered":
        request = {
            "data": {k: data[k] for k in ("school", "y", "log_sigma")},
            "formula": "y ~ 1 + (1|school)",
            "distributional": {"sigma": "0 + offset(log_sigma)"},  # known per-school SD
            "priors": {
                "Intercept": normal(0, 5),
                "1|school": normal(0, {"dist": "HalfCauchy", "params": {"beta": 5}}),
            },
        }
    elif name == "radon_contextual_effects_mn_halfnormal":
        request = {
            "data": {k: data[k] for k in ("log_radon", "log_uranium", "floor", "floor_by_county")}
            | {"county": strings(data["county"])},
            "formula": "log_radon ~ 1 + log_uranium + floor + floor_by_county + (1|county)",
            "priors": {
                "Intercept": normal(0, 1),
                "log_uranium": normal(0, 1),
                "floor": normal(0, 1),
                "floor_by_county": normal(0, 1),
                "1|county": normal(0, half_normal(1)),
                "sigma": half_normal(1),
            },
        }
    elif name in ("radon_mn_variable_intercept_slope", "radon_mn_correlated"):
        # the same data and priors; brms' reference (tests/reference/brms_references.R)
        # correlates the intercepts and slopes, with an LKJ(1) prior on the correlation
        correlated = name == "radon_mn_correlated"
        groups = "(1 + floor_measure | county)" if correlated else (
            "(1|county) + (0 + floor_measure|county)"
        )  # fmt: skip
        request = {
            "data": {k: data[k] for k in ("log_radon", "floor_measure")}
            | {"county": strings(data["county_idx"])},
            "formula": f"log_radon ~ 1 + floor_measure + {groups}",
            "priors": {
                "Intercept": normal(0, 10),
                "floor_measure": normal(0, 10),
                "1|county": normal(0, half_normal(1)),
                "floor_measure|county": normal(0, half_normal(1)),
                "sigma": half_normal(1),
            },
        }
        if correlated:
            lkj = {"dist": "LKJCorr", "params": {"eta": 1}}
            request["priors"]["1|county:floor_measure|county_corr"] = lkj
    else:  # synthetic_irt_1pl: crossed logistic, group SDs fixed at 1
        fixed_one = {"dist": "Constant", "params": {"value": 1}}
        request = {
            "data": {
                "student": strings(data["student"]),
                "question": strings(data["question"]),
                "correct": data["correct"],
            },
            "formula": "correct ~ 1 + (1|student) + (1|question)",
            "family": "bernoulli",
            "priors": {
                "Intercept": normal(0.75, 1),
                "1|student": normal(0, fixed_one),
                "1|question": normal(0, fixed_one),
            },
        }
    # The crossed logistic model samples its posterior as well at 0.8 as at the 0.95 a
    # bernoulli fit defaults to (no divergence either way: 58 s against 120 s of sampling).
    sampler = FULL | ({"target_accept": 0.8} if name == "synthetic_irt_1pl" else {})
    return request | {"sampler": sampler}, reference


@pytest.mark.parametrize(
    "name",
    [
        "eight_schools_noncentered",
        "radon_contextual_effects_mn_halfnormal",
        "radon_mn_variable_intercept_slope",
        "radon_mn_correlated",
        "synthetic_irt_1pl",
    ],
)
def test_reference_posterior_is_reproduced(client: httpx.Client, name: str) -> None:
    request, reference = problem(name)
    response = client.post("/v1/fits", json=request)
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    fit = wait_for_fit(client, location, timeout_s=900)
    assert fit["status"] == "succeeded", fit["error"]

    assert_reproduced(name, compare(fitted_estimates(client, location), reference), reference)

    # the priors that were sent are the priors that were used
    used = {p["term"]: p for p in client.get(f"{location}/priors").json()["priors"]}
    for term, prior in request["priors"].items():
        assert used[term]["dist"] == prior["dist"], term


def test_a_conjugate_normal_model_matches_its_exact_posterior(client: httpx.Client) -> None:
    # y_i ~ Normal(mu, 2) with the SD known, mu ~ Normal(1, 3): the posterior of mu is
    # Normal with precision 1/9 + n/4 and mean (1/9 + sum(y)/4) / precision.
    rng = np.random.default_rng(7)
    y = rng.normal(2.5, 2.0, size=40).round(4)
    precision = 1 / 9 + y.size / 4
    exact_mean = (1 / 9 * 1 + y.sum() / 4) / precision
    exact_sd = math.sqrt(1 / precision)
    response = client.post(
        "/v1/fits",
        json={
            "data": {"y": y.tolist(), "log_sigma": [math.log(2.0)] * y.size},
            "formula": "y ~ 1",
            "distributional": {"sigma": "0 + offset(log_sigma)"},
            "priors": {"Intercept": normal(1, 3)},
            "sampler": FULL,
        },
    )
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    assert wait_for_fit(client, location)["status"] == "succeeded"
    (mu,) = client.get(f"{location}/summary").json()["parameters"]
    assert mu["name"] == "Intercept"
    assert abs(mu["mean"] - exact_mean) / exact_sd < 0.1
    assert abs(mu["sd"] / exact_sd - 1) < 0.05
    # the 94% HDI of a normal is mean +- 1.881 sd
    assert mu["lower"] == pytest.approx(exact_mean - 1.881 * exact_sd, abs=0.1 * exact_sd)
    assert mu["upper"] == pytest.approx(exact_mean + 1.881 * exact_sd, abs=0.1 * exact_sd)
