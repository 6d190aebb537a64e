"""Over HTTP against the real deployment: refused requests never reach a worker, unknown
fits are 404, results wait for success, failures are data."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis import Redis

from tests.conftest import redis_url
from tests.e2e.conftest import QUICK, wait_for_fit

pytestmark = pytest.mark.e2e


def test_health(client: httpx.Client) -> None:
    assert client.get("/v1/healthz").json() == {"status": "ok"}


def test_openapi_docs_are_served(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/fits/{fit_id}/predictions" in paths


@pytest.mark.parametrize(
    ("formula", "field_message"),
    [
        ("score ~ (1 | school", "bracket is not closed"),
        ("score ~ (1 | classroom)", "'classroom' is not a column of the data"),
        ("score ~ C.__globals__", "dotted names are refused"),
        ("score ~ school school", "unexpected text"),
    ],
)
def test_refused_formulas_are_not_queued(
    client: httpx.Client, seed_columns: dict[str, list[Any]], formula: str, field_message: str
) -> None:
    redis = Redis.from_url(redis_url(15))
    queued_before = redis.zcard("hbm:fits")
    response = client.post("/v1/fits", json={"data": seed_columns, "formula": formula})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["field"] == "formula"
    assert field_message in error["message"]
    assert redis.zcard("hbm:fits") == queued_before


def test_unknown_fit_is_404(client: httpx.Client) -> None:
    response = client.get("/v1/fits/" + "f" * 32)
    assert response.status_code == 404
    assert response.json()["title"] == "Not found"


def test_a_fit_that_cannot_be_built_fails_with_a_reason(client: httpx.Client) -> None:
    # Valid for the API, but Bambi cannot build it: the grouping factor has one level,
    # and the response is constant (no scale to set default priors from).
    data = {"g": ["a"] * 4, "y": [1.0] * 4}
    response = client.post(
        "/v1/fits", json={"data": data, "formula": "y ~ (1 | g)", "sampler": QUICK}
    )
    assert response.status_code == 202
    fit = wait_for_fit(client, response.headers["location"])
    if fit["status"] == "failed":
        assert fit["error"]["reason"] in {"model_error", "compile_error", "sampling_error"}
        message = fit["error"]["message"]
        assert "Traceback" not in message
        assert "Error" not in message and "(" not in message  # no exception class names
        summary = client.get(response.headers["location"] + "/summary")
        assert summary.status_code == 409
    else:
        pytest.fail(f"expected the degenerate model to fail, got {fit['status']}")
