"""Posterior predictive checks over HTTP: a model that is wrong on purpose (a gaussian fit
to skewed counts with many zeros) reproduces neither their minimum nor their spread, and
its p-values say so; a negative binomial model of the same counts does; the seed study's
check per school has one entry per school."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import QUICK, wait_for_fit

pytestmark = pytest.mark.e2e


def skewed_counts() -> dict[str, list[Any]]:
    """300 counts in 10 groups: negative binomial, mean about 2, many zeros."""
    rng = np.random.default_rng(8)
    g = np.repeat(np.arange(10), 30)
    mu = np.exp(0.7 + rng.normal(0, 0.3, 10))[g]
    y = rng.negative_binomial(0.8, 0.8 / (0.8 + mu))
    return {"y": y.tolist(), "g": [f"g{i}" for i in g]}


def fitted(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/fits", json={"sampler": {**QUICK, "seed": 4}, **body})
    assert response.status_code == 202, response.text
    fit = wait_for_fit(client, response.headers["location"])
    assert fit["status"] == "succeeded", fit
    return str(fit["id"])


@pytest.fixture(scope="module")
def count_fits(deployment: Any) -> dict[str, str]:
    data = skewed_counts()
    with deployment.client() as client:
        return {
            family: fitted(client, {"data": data, "formula": "y ~ (1 | g)", "family": family})
            for family in ("gaussian", "negativebinomial")
        }


def check(client: httpx.Client, fit_id: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/v1/fits/{fit_id}/ppc", params={"seed": 1, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_wrong_model_gets_extreme_p_values_and_a_right_one_does_not(
    client: httpx.Client, count_fits: dict[str, str]
) -> None:
    data = skewed_counts()
    for stat, observed in (("min", 0.0), ("sd", float(np.std(data["y"], ddof=1)))):
        wrong = check(client, count_fits["gaussian"], stat=stat)
        right = check(client, count_fits["negativebinomial"], stat=stat)
        assert wrong["overall"]["observed"] == pytest.approx(observed)
        assert right["overall"]["observed"] == pytest.approx(observed)
        assert wrong["n_draws"] == QUICK["draws"] * QUICK["chains"]
        if stat == "min":  # replicated gaussian data go far below zero: T(y_rep) < T(y)
            assert wrong["overall"]["p_value"] < 0.01
        assert 0.05 < right["overall"]["p_value"] < 0.95, (stat, right["overall"])


def test_the_seed_study_is_checked_school_by_school(
    client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    fit_id = fitted(client, {"data": seed_records, "formula": "score ~ (1 | school)"})
    result = check(client, fit_id, stat="mean", by="school", prob=0.9)
    assert result["by"] == "school" and result["n_levels"] == 20
    assert len(result["levels"]) == 20
    assert sum(level["n_obs"] for level in result["levels"]) == 484
    assert all(0 <= level["p_value"] <= 1 for level in result["levels"])
    assert result["interval"] == {"kind": "hdi", "prob": 0.9}
    assert check(client, fit_id, stat="mean", by="school", prob=0.9) == result  # seeded


def test_a_check_by_something_the_data_does_not_have_is_refused(
    client: httpx.Client, count_fits: dict[str, str]
) -> None:
    response = client.get(f"/v1/fits/{count_fits['gaussian']}/ppc", params={"by": "county"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "by"
    response = client.get(f"/v1/fits/{count_fits['gaussian']}/ppc", params={"stat": "mode"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "stat"
