"""``GET /metrics`` shows the whole service: what every process recorded (workers are other
processes, possibly on other hosts) adds up in Redis, fits are counted once as they end,
queues and workers are read at scrape time, and API requests are labelled by route
template, never by raw path. Redis is real; "processes" are real subprocesses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.api.metrics import registry_for
from service.api.security import key_digest
from service.core.jobs import JobStore, new_fit_id
from service.core.metrics import (
    CALLS,
    FIT_PHASES,
    HTTP_REQUESTS,
    RECORDER,
    Recorder,
    observe_fit,
)
from service.core.schemas import FailureReason, FitError, FitStatus, Timings
from service.core.settings import Settings
from tests.conftest import ROOT, clean_redis, redis_url
from tests.unit.test_api import app_client, body
from tests.unit.test_job_store import running, spec

#: A worker process somewhere: records one call per argv value (seconds) and flushes.
WORKER = """
import sys
from redis import Redis
from service.core.metrics import CALLS, Recorder
recorder = Recorder()
for seconds in sys.argv[2:]:
    recorder.observe(CALLS, float(seconds), ("predict", "ok"))
recorder.flush(Redis.from_url(sys.argv[1]))
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def store() -> JobStore:
    RECORDER.clear()  # what other tests' apps recorded in this process
    return JobStore(clean_redis(redis_url(14)), retention_s=3600)


def scrape(store: JobStore) -> Samples:
    """Every sample the collector exposes: (name, sorted labels) -> value."""
    text = generate_latest(registry_for(store, Settings())).decode()
    return parse(text)


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_what_several_worker_processes_record_adds_up_in_one_scrape(store: JobStore) -> None:
    url = redis_url(14)
    for seconds in (["0.003", "0.2"], ["0.2", "7"]):  # two processes, as on two hosts
        subprocess.run([sys.executable, "-c", WORKER, url, *seconds], cwd=ROOT, check=True)

    samples = scrape(store)

    name = "hbm_worker_call_duration_seconds"
    call = {"call": "predict", "outcome": "ok"}
    assert value(samples, f"{name}_count", **call) == 4
    assert value(samples, f"{name}_sum", **call) == pytest.approx(7.403)
    # buckets are cumulative: <= 0.005 one, <= 0.25 three, <= 10 all four
    assert value(samples, f"{name}_bucket", le="0.005", **call) == 1
    assert value(samples, f"{name}_bucket", le="0.1", **call) == 1
    assert value(samples, f"{name}_bucket", le="0.25", **call) == 3
    assert value(samples, f"{name}_bucket", le="5.0", **call) == 3
    assert value(samples, f"{name}_bucket", le="10.0", **call) == 4
    assert value(samples, f"{name}_bucket", le="+Inf", **call) == 4


def test_counters_keep_counting_across_a_restart_of_the_process_that_records(
    store: JobStore,
) -> None:
    first = Recorder()
    first.inc(HTTP_REQUESTS, ("/v1/fits", "POST", "202"), 3)
    first.flush(store.redis)
    after_restart = Recorder()  # a new process: it starts from nothing, Redis does not
    after_restart.inc(HTTP_REQUESTS, ("/v1/fits", "POST", "202"))
    after_restart.flush(store.redis)

    samples = scrape(store)

    labels = {"route": "/v1/fits", "method": "POST", "status": "202"}
    assert value(samples, "hbm_http_requests_total", **labels) == 4


def test_a_flush_that_cannot_reach_redis_keeps_its_amounts_for_the_next(store: JobStore) -> None:
    recorder = Recorder()
    recorder.observe(CALLS, 0.5, ("ppc", "error"))
    with pytest.raises(RedisConnectionError):
        recorder.flush(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1))
    assert recorder.pending()

    assert recorder.flush(store.redis) == 3  # its bucket, sum and count
    assert not recorder.pending()
    samples = scrape(store)
    assert (
        value(samples, "hbm_worker_call_duration_seconds_count", call="ppc", outcome="error") == 1
    )


def test_fits_are_counted_once_as_they_end_by_status_and_failure_reason(store: JobStore) -> None:
    succeeded = running(store)
    assert store.finish(succeeded, FitStatus.SUCCEEDED, token="run-1") is FitStatus.SUCCEEDED
    store.finish(succeeded, FitStatus.SUCCEEDED, token="run-1")  # a retry changes nothing
    timed_out = running(store)
    error = FitError(reason=FailureReason.TIMEOUT, message="past the time limit")
    store.finish(timed_out, FitStatus.FAILED, token="run-1", error=error)
    queued = new_fit_id()
    store.create(queued, spec(seed=2))
    assert store.request_cancel(queued) is FitStatus.CANCELLED
    store.request_cancel(queued)  # already cancelled: not counted again
    cancelled_running = running(store)
    store.request_cancel(cancelled_running)
    store.finish(cancelled_running, FitStatus.SUCCEEDED, token="run-1")  # ends cancelled

    samples = scrape(store)

    name = "hbm_fits_finished_total"
    assert value(samples, name, status="succeeded", reason="") == 1
    assert value(samples, name, status="failed", reason="timeout") == 1
    assert value(samples, name, status="cancelled", reason="") == 2
    assert sum(v for (n, _), v in samples.items() if n == name) == 4
    RECORDER.flush(store.redis)  # the job store counts created fits in its process
    assert value(scrape(store), "hbm_fits_submitted_total") == 4


def test_a_succeeded_fit_records_each_phase_and_whether_it_reused_a_compiled_model(
    store: JobStore,
) -> None:
    recorder = Recorder()
    compiled = Timings(queued_s=0.2, build_s=0.4, compile_s=3.1, compiled=True, sampling_s=0.1)
    reused = Timings(queued_s=0.1, build_s=0.3, compile_s=0.0, compiled=False, sampling_s=0.2)
    for timings in (compiled, reused):
        observe_fit(timings.model_copy(update={"summarize_s": 0.6}), recorder)
    recorder.flush(store.redis)

    samples = scrape(store)

    name = f"{FIT_PHASES.name}_count"
    for phase in ("queued", "build", "compile", "sample", "summarize"):
        assert value(samples, name, phase=phase) == 2, phase
    assert value(samples, f"{FIT_PHASES.name}_bucket", phase="compile", le="0.1") == 1
    assert value(samples, f"{FIT_PHASES.name}_bucket", phase="compile", le="5.0") == 2
    assert value(samples, "hbm_fit_compiled_models_total", reused="true") == 1
    assert value(samples, "hbm_fit_compiled_models_total", reused="false") == 1


def test_queue_depths_live_workers_and_fits_in_progress_are_read_at_scrape_time(
    store: JobStore,
) -> None:
    store.redis.rpush("hbm.fits", "m1", "m2", "m3")
    store.redis.rpush("hbm.interactive", "m4")
    store.announce_worker("hbm.fits", "host-a:1", ttl_s=30)
    store.announce_worker("hbm.fits", "host-b:7", ttl_s=30)
    store.announce_worker("hbm.interactive", "host-a:2", ttl_s=-1)  # expired: dead
    running(store)

    samples = scrape(store)

    assert value(samples, "hbm_queue_depth", queue="hbm.fits") == 3
    assert value(samples, "hbm_queue_depth", queue="hbm.interactive") == 1
    assert value(samples, "hbm_workers_live", queue="hbm.fits") == 2
    assert value(samples, "hbm_workers_live", queue="hbm.interactive") == 0
    assert value(samples, "hbm_fits_in_progress") == 1


# ------------------------------------------------------------------------------ the route


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    RECORDER.clear()
    with app_client(tmp_path) as test_client:
        yield test_client


def test_api_requests_are_counted_by_route_template_method_and_status(
    client: TestClient,
) -> None:
    fit_id = client.post("/v1/fits", json=body()).json()["id"]
    client.get(f"/v1/fits/{fit_id}")
    client.get(f"/v1/fits/{fit_id}/summary")  # 409: not fitted yet
    client.get("/v1/no-such-route/12345")
    client.delete("/v1/healthz")  # 405

    text = client.get("/metrics").text
    samples = parse(text)

    requests = "hbm_http_requests_total"
    assert value(samples, requests, route="/v1/fits", method="POST", status="202") == 1
    assert value(samples, requests, route="/v1/fits/{fit_id}", method="GET", status="200") == 1
    summary = {"route": "/v1/fits/{fit_id}/summary", "method": "GET"}
    assert value(samples, requests, status="409", **summary) == 1
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    assert value(samples, requests, route="/v1/healthz", method="DELETE", status="405") == 1
    assert value(samples, "hbm_http_request_duration_seconds_count", **summary) == 1
    assert value(samples, "hbm_fits_submitted_total") == 1
    assert fit_id not in text and "12345" not in text  # no id is ever a label


def test_requests_refused_before_routing_are_counted_under_their_route(tmp_path: Path) -> None:
    RECORDER.clear()
    with app_client(tmp_path, api_key_hashes=[key_digest("k")]) as client:
        assert client.get(f"/v1/fits/{new_fit_id()}").status_code == 401
        samples = parse(client.get("/metrics").text)

    labels = {"route": "/v1/fits/{fit_id}", "method": "GET", "status": "401"}
    assert value(samples, "hbm_http_requests_total", **labels) == 1


def test_metrics_need_the_bearer_token_when_one_is_set(tmp_path: Path) -> None:
    with app_client(tmp_path, metrics_token="s3cret") as client:
        for headers in ({}, {"Authorization": "Bearer guess"}, {"X-API-Key": "s3cret"}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
        allowed = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 200
        assert allowed.headers["content-type"].startswith("text/plain")
        assert "hbm_queue_depth" in allowed.text


def test_an_empty_token_asks_for_none(tmp_path: Path) -> None:
    with app_client(tmp_path, metrics_token="") as client:
        assert client.get("/metrics").status_code == 200


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    with app_client(tmp_path, metrics_enabled=False) as client:
        assert client.get("/metrics").status_code == 404
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]
