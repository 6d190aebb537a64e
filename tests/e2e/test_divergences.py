"""A fit whose first run diverges is sampled once more at a higher target acceptance rate,
as a Stan user raises adapt_delta, and /diagnostics reports both runs: eight schools,
centred on purpose, at target_accept 0.55 (a funnel the sampler's large steps fall into)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import wait_for_fit
from tests.support.reference import load

pytestmark = pytest.mark.e2e


def eight_schools(**sampler: Any) -> dict[str, Any]:
    data, _ = load("eight_schools_noncentered")
    return {
        "data": {
            "school": [str(s) for s in data["school"]],
            "y": data["y"],
            "log_sigma": data["log_sigma"],
        },
        "formula": "y ~ 1 + (1|school)",
        "distributional": {"sigma": "0 + offset(log_sigma)"},
        "priors": {
            "Intercept": {"dist": "Normal", "params": {"mu": 0, "sigma": 5}},
            "1|school": {
                "dist": "Normal",
                "params": {"mu": 0, "sigma": {"dist": "HalfCauchy", "params": {"beta": 5}}},
            },
        },
        "sampler": {
            "draws": 500,
            "tune": 500,
            "chains": 2,
            "seed": 3,
            "target_accept": 0.55,
            "parameterization": "centered",
            **sampler,
        },
    }


def diagnostics_of(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    fit = wait_for_fit(client, response.headers["location"])
    assert fit["status"] == "succeeded", fit
    diagnostics: dict[str, Any] = client.get(f"/v1/fits/{fit['id']}/diagnostics").json()
    return diagnostics


def test_a_divergent_fit_is_sampled_again_with_smaller_steps(client: httpx.Client) -> None:
    diagnostics = diagnostics_of(client, eight_schools())
    first, second = diagnostics["runs"]
    assert first["target_accept"] == 0.55
    assert first["divergences"] > 0.01 * first["draws"] == 10
    assert second["target_accept"] == pytest.approx(0.8875)
    assert second["divergences"] < first["divergences"] / 4
    assert diagnostics["divergences"] == second["divergences"]  # results are the second run's


def test_the_second_run_can_be_declined(client: httpx.Client) -> None:
    diagnostics = diagnostics_of(client, eight_schools(refit_divergent=False))
    (only,) = diagnostics["runs"]
    assert only["divergences"] > 10 and diagnostics["verdict"] == "fail"
