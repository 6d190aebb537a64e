"""Operating the service: ``/metrics`` shows a real fit and prediction as the workers
recorded them (other processes), behind its token; a request's ``X-Request-ID`` follows
its fit into the fit worker's JSON log lines, and every line the worker writes while it
fits names the fit; readiness names a worker that is missing.

One deployment with ``HBM_LOG_FORMAT=json`` and a metrics token: the API and both workers
as processes, on a real Redis, logging to files under the deployment's folder."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import QUICK, Deployment, deployed, wait_for_fit

pytestmark = pytest.mark.e2e

TOKEN = "scrape-me"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from deployed(
        tmp_path_factory,
        11,
        HBM_LOG_FORMAT="json",
        HBM_LOG_LEVEL="info",  # the API's access lines too
        HBM_METRICS_TOKEN=TOKEN,
    )


@pytest.fixture(scope="module")
def client(deployment: Deployment) -> Iterator[httpx.Client]:
    with deployment.client() as http:
        yield http


@pytest.fixture(scope="module")
def fitted(client: httpx.Client, seed_columns: dict[str, list[Any]]) -> dict[str, Any]:
    """A fit submitted with ``X-Request-ID: abc-123`` that succeeded, then one prediction."""
    request = {"data": seed_columns, "formula": "score ~ (1 | school)", "sampler": QUICK}
    created = client.post("/v1/fits", json=request, headers={"X-Request-ID": "abc-123"})
    assert created.status_code == 202 and created.headers["x-request-id"] == "abc-123"
    fit = wait_for_fit(client, created.headers["location"])
    assert fit["status"] == "succeeded", fit
    predicted = client.post(
        f"/v1/fits/{fit['id']}/predictions",
        json={"data": [{"school": 1}, {"school": 999}]},
        headers={"X-Request-ID": "pred-456"},
    )
    assert predicted.status_code == 200, predicted.text
    return fit


def scrape(client: httpx.Client) -> tuple[str, Samples]:
    answer = client.get("/metrics", headers=SCRAPE)
    assert answer.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    return answer.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def json_lines(deployment: Deployment, name: str) -> list[dict[str, Any]]:
    """Every line a process logged, each parsed as JSON (a line that is not JSON fails),
    but Celery's shutdown notice, which it writes straight to the terminal."""
    text = (deployment.logs / f"{name}.log").read_text()
    return [
        json.loads(line)
        for line in text.splitlines()
        if line.strip() and not line.startswith("worker: Warm shutdown")
    ]


def test_metrics_need_the_token(client: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
    assert client.get("/metrics", headers=SCRAPE).status_code == 200


def test_a_fit_and_a_prediction_show_in_the_metrics_the_workers_recorded(
    client: httpx.Client, fitted: dict[str, Any]
) -> None:
    # The interactive worker records the prediction just after it replied: look again
    # until it is there.
    deadline = time.monotonic() + 60
    call = {"call": "predict", "outcome": "ok"}
    while True:
        text, samples = scrape(client)
        if value(samples, "hbm_worker_call_duration_seconds_count", **call) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)

    assert value(samples, "hbm_worker_call_duration_seconds_count", **call) == 1
    assert value(samples, "hbm_worker_call_duration_seconds_sum", **call) > 0
    assert value(samples, "hbm_fits_submitted_total") == 1
    assert value(samples, "hbm_fits_finished_total", status="succeeded", reason="") == 1
    for phase in ("queued", "build", "compile", "sample", "summarize"):
        assert value(samples, "hbm_fit_phase_duration_seconds_count", phase=phase) == 1, phase
    reuse = [value(samples, "hbm_fit_compiled_models_total", reused=r) for r in ("true", "false")]
    assert sum(reuse) == 1
    created = {"route": "/v1/fits", "method": "POST", "status": "202"}
    assert value(samples, "hbm_http_requests_total", **created) == 1
    predictions = {"route": "/v1/fits/{fit_id}/predictions", "method": "POST"}
    assert value(samples, "hbm_http_request_duration_seconds_count", **predictions) == 1
    for queue in ("hbm.fits", "hbm.interactive"):
        assert ("hbm_queue_depth", (("queue", queue),)) in samples
        assert value(samples, "hbm_workers_live", queue=queue) == 1
    assert fitted["id"] not in text  # ids are never labels


def test_the_request_id_follows_the_fit_into_the_workers_json_log_lines(
    deployment: Deployment, client: httpx.Client, fitted: dict[str, Any]
) -> None:
    fit_id = fitted["id"]
    assert client.get(f"/v1/fits/{fit_id}").json()["request_id"] == "abc-123"
    (submitted,) = [
        line for line in json_lines(deployment, "api") if '"POST /v1/fits ' in line["message"]
    ]
    assert submitted["request_id"] == "abc-123" and submitted["logger"] == "uvicorn.access"

    lines = json_lines(deployment, "worker-fits")

    about_fit = [line for line in lines if line["fit_id"] == fit_id]
    messages = [line["message"] for line in about_fit]
    assert any("attempt 1 started" in m for m in messages), messages
    assert any("succeeded" in m for m in messages), messages  # ours, and Celery's
    assert {line["request_id"] for line in about_fit} == {"abc-123"}
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id", "fit_id"} <= set(line)
    # Every line the pool process wrote while it worked on the fit names the fit.
    (pool,) = {line["process"] for line in about_fit}
    first, last = (lines.index(about_fit[0]), lines.index(about_fit[-1]))
    while_fitting = [line for line in lines[first : last + 1] if line["process"] == pool]
    assert len(while_fitting) >= 3
    assert all(line["fit_id"] == fit_id for line in while_fitting), while_fitting


def test_a_prediction_s_request_id_reaches_the_interactive_worker_s_lines(
    deployment: Deployment, fitted: dict[str, Any]
) -> None:
    lines = json_lines(deployment, "worker-interactive")

    answered = [line for line in lines if line["request_id"] == "pred-456"]
    assert answered, lines[-5:]
    assert {line["fit_id"] for line in answered} == {fitted["id"]}


def test_readiness_names_the_worker_that_is_missing(
    deployment: Deployment, client: httpx.Client
) -> None:
    assert client.get("/v1/readyz").status_code == 200

    deployment.stop("worker-interactive")  # retires its presence as it shuts down
    deadline = time.monotonic() + 60
    while (answer := client.get("/v1/readyz")).status_code == 200:
        assert time.monotonic() < deadline, "readyz stayed 200 without an interactive worker"
        time.sleep(0.5)

    assert answer.status_code == 503
    assert answer.json()["detail"] == "not ready: no interactive worker is alive"
