"""The seed study's argument over HTTP: complete pooling (``score ~ 1``), no pooling
(``score ~ 0 + C(school)``) and partial pooling (``score ~ (1 | school)``), each with its
PSIS-LOO, then compared: complete pooling predicts far worse; the other two are not
distinguishable. Fits of other data are refused with the reason. And the LOO of one model
against R's loo on Stan draws of the same model and priors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import QUICK, wait_for_fit
from tests.support.reference import FOLDER

pytestmark = pytest.mark.e2e

MODELS = {
    "complete pooling": "score ~ 1",
    "no pooling": "score ~ 0 + C(school)",
    "partial pooling": "score ~ (1 | school)",
}


def fit(client: httpx.Client, records: list[dict[str, Any]], name: str, formula: str) -> str:
    body = {"data": records, "formula": formula, "name": name, "sampler": {**QUICK, "seed": 11}}
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    record = wait_for_fit(client, response.headers["location"])
    assert record["status"] == "succeeded", record
    return str(record["id"])


@pytest.fixture(scope="module")
def pooling_fits(deployment: Any, seed_records: list[dict[str, Any]]) -> dict[str, str]:
    with deployment.client() as client:
        return {name: fit(client, seed_records, name, f) for name, f in MODELS.items()}


def test_each_fit_has_its_loo_computed_once_then_stored(
    client: httpx.Client, pooling_fits: dict[str, str]
) -> None:
    fit_id = pooling_fits["partial pooling"]
    first = client.get(f"/v1/fits/{fit_id}/loo")
    assert first.status_code == 200, first.text
    loo = first.json()
    assert loo["n_obs"] == 484 and loo["n_draws"] == QUICK["draws"] * QUICK["chains"]
    assert -1240 < loo["elpd_loo"] < -1200  # in-process Bambi: about -1218
    assert loo["looic"] == pytest.approx(-2 * loo["elpd_loo"])
    assert 10 < loo["p_loo"] < 30 and loo["se"] > 0
    assert sum(loo["pareto_k"].values()) == 484
    # the right model's leave-one-out predictions are calibrated: uniform LOO-PIT values
    assert loo["loo_pit"]["calibrated"], loo["loo_pit"]
    assert 0 < loo["loo_pit"]["ks_distance"] <= loo["loo_pit"]["threshold"] < 0.07
    assert client.get(f"/v1/fits/{fit_id}/loo").content == first.content  # stored
    assert client.get(f"/v1/fits/{fit_id}").json()["links"]["loo"].endswith("/loo")


def test_the_three_pooling_models_compare_as_the_seed_study_argues(
    client: httpx.Client, pooling_fits: dict[str, str]
) -> None:
    response = client.post("/v1/comparisons", json={"fit_ids": list(pooling_fits.values())})
    assert response.status_code == 200, response.text
    comparison = response.json()
    assert comparison["n_obs"] == 484
    ranked = [m["name"] for m in comparison["models"]]
    assert ranked[-1] == "complete pooling"
    assert set(ranked[:2]) == {"no pooling", "partial pooling"}
    best, second, last = comparison["models"]
    assert best["elpd_diff"] == 0 and best["rank"] == 0
    assert abs(second["elpd_diff"]) < 2 * second["se_diff"]
    assert -last["elpd_diff"] > 10 * last["se_diff"]  # about 290 points worse
    assert sum(m["weight"] for m in comparison["models"]) == pytest.approx(1.0, abs=1e-6)
    verdict = comparison["verdict"]
    assert "not distinguishable" in verdict
    assert "'complete pooling' predicts worse" in verdict


def test_fits_of_other_data_are_not_compared(
    client: httpx.Client, pooling_fits: dict[str, str], seed_records: list[dict[str, Any]]
) -> None:
    fewer = fit(client, seed_records[:300], "fewer students", "score ~ (1 | school)")
    response = client.post(
        "/v1/comparisons", json={"fit_ids": [pooling_fits["partial pooling"], fewer]}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["field"] == "fit_ids" and "different data" in error["message"]
    unknown = client.post(
        "/v1/comparisons", json={"fit_ids": [pooling_fits["partial pooling"], "0" * 32]}
    )
    assert unknown.status_code == 404


def test_loo_agrees_with_r_loo_on_the_same_model_and_priors(
    client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    """R's loo on brms (Stan) draws of the seed study with the same priors
    (``tests/reference/brms_references.R``): equal within Monte Carlo error."""
    reference = json.loads((FOLDER / "seed_loo.reference.json").read_text())
    body = {
        "data": seed_records,
        "formula": "score ~ (1 | school)",
        "priors": {
            "Intercept": {"dist": "Normal", "params": {"mu": 0, "sigma": 20}},
            "1|school": {
                "dist": "Normal",
                "params": {"mu": 0, "sigma": {"dist": "HalfNormal", "params": {"sigma": 10}}},
            },
            "sigma": {"dist": "HalfNormal", "params": {"sigma": 10}},
        },
        "sampler": {"chains": 4, "draws": 1000, "tune": 1000, "seed": 5},
    }
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    fit_id = wait_for_fit(client, response.headers["location"])["id"]
    loo = client.get(f"/v1/fits/{fit_id}/loo").json()
    # Monte Carlo error of elpd_loo here is about 0.1 (4,000 draws, p_loo 20); 1.0 is
    # a tenth of what a change of the model (its priors or likelihood) moves it.
    assert loo["elpd_loo"] == pytest.approx(reference["elpd_loo"], abs=1.0)
    assert loo["se"] == pytest.approx(reference["elpd_loo_se"], rel=0.02)
    assert loo["p_loo"] == pytest.approx(reference["p_loo"], abs=1.0)
    assert max(loo["pareto_k"]["ok"], loo["pareto_k"]["bad"], loo["pareto_k"]["very_bad"]) == 0
