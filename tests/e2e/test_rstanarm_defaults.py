"""``prior_defaults: "rstanarm"``: a user moving from ``stan_glmer`` who sets no prior gets
rstanarm's posterior. References: rstanarm 2.21 at its default priors
(``tests/reference/rstanarm_references.R``) on a gaussian model with a binary predictor, a
binomial model of real data with a categorical predictor (lme4's cbpp, where Bambi's own
defaults move the period effects by 0.5 to 0.7 posterior sd), and correlated varying
intercepts and slopes (decov of a 2 x 2 covariance). The priors the fit lists are the
adjusted priors rstanarm's ``prior_summary`` reports, and every reference mean is within
0.1 reference sd (or 3 Monte Carlo SEs) and every sd within 15%."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import wait_for_fit
from tests.support.reference import FOLDER, assert_reproduced, compare, fitted_estimates, load

pytestmark = pytest.mark.e2e

SAMPLER = {"chains": 4, "draws": 1000, "tune": 1000, "seed": 4711}

FORMULAS = {
    "rstanarm_radon_gaussian": "log_radon ~ floor_measure + (1 | county)",
    "rstanarm_radon_slopes": "log_radon ~ floor_measure + (1 + floor_measure | county)",
    "rstanarm_cbpp_binomial": "p(incidence, size) ~ period + (1 | herd)",
}


def request_for(name: str) -> dict[str, Any]:
    """The request stating problem ``name`` as stan_glmer's call does: no prior at all."""
    data, _ = load(name)
    if name == "rstanarm_cbpp_binomial":
        columns = data
        family = "binomial"
    else:
        columns = {k: data[k] for k in ("log_radon", "floor_measure")}
        columns["county"] = [str(c) for c in data["county_idx"]]
        family = "gaussian"
    return {
        "data": columns,
        "formula": FORMULAS[name],
        "family": family,
        "prior_defaults": "rstanarm",
        "sampler": SAMPLER,
    }


@pytest.mark.parametrize("name", list(FORMULAS))
def test_rstanarm_defaults_give_rstanarms_posterior(client: httpx.Client, name: str) -> None:
    response = client.post("/v1/fits", json=request_for(name))
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    fit = wait_for_fit(client, location, timeout_s=900)
    assert fit["status"] == "succeeded", fit["error"]

    # the priors are rstanarm's adjusted priors (prior_summary), computed from the data
    expected = json.loads((FOLDER / f"{name}.reference.json").read_text())["priors"]
    used = {p["term"]: p for p in client.get(f"{location}/priors").json()["priors"]}
    intercept = used["Intercept"]["params"]
    assert intercept["mu"] == pytest.approx(expected["intercept"]["location"][0], rel=1e-9)
    assert intercept["sigma"] == pytest.approx(expected["intercept"]["scale"], rel=1e-9)
    coefficient = "period" if name == "rstanarm_cbpp_binomial" else "floor_measure"
    scales = used[coefficient]["params"]["sigma"]
    scales = scales if isinstance(scales, list) else [scales]
    assert scales == pytest.approx(expected["coefficients"]["scale"], rel=1e-9)
    if expected["aux_rate"]:
        assert used["sigma"] == {
            "term": "sigma",
            "kind": "auxiliary",
            "dist": "Exponential",
            "params": {"lam": pytest.approx(expected["aux_rate"], rel=1e-9)},
        }
    group_sds = [p for p in used.values() if p["kind"] == "group" and p["dist"] == "decov"]
    assert group_sds, used

    _, reference = load(name)
    assert_reproduced(name, compare(fitted_estimates(client, location), reference), reference)


def test_rstanarm_defaults_are_refused_where_rstanarm_has_none(client: httpx.Client) -> None:
    data = {"y": [0.5, 1.5, 2.5, 3.5], "g": ["a", "a", "b", "b"]}
    for extra, says in (
        ({"family": "t"}, "no defaults for the t family"),
        ({"distributional": {"sigma": "1 + g"}}, "no distributional formulas"),
    ):
        response = client.post(
            "/v1/fits",
            json={"data": data, "formula": "y ~ (1 | g)", "prior_defaults": "rstanarm"} | extra,
        )
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["errors"][0]["field"] == "prior_defaults"
        assert says in problem["errors"][0]["message"]
