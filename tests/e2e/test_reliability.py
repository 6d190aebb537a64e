"""Faults injected for real: pool processes and whole workers killed with SIGKILL, a
worker stopped with SIGTERM, cancellations, time limits and duplicate submissions. A fit
is never lost, never stuck, never run twice at once."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment, pool_children, wait_for_fit, wait_for_status

pytestmark = pytest.mark.e2e


def submit(client: httpx.Client, records: list[dict[str, Any]], **sampler: Any) -> str:
    """A fit that samples for several seconds (Student-t, whose likelihood is row-wise, on
    the seed study's rows five times over, 2 x 8,000 draws), so that it can be caught
    running even when its worker has the model compiled already, on a quiet machine too."""
    body = {
        "data": records * 5,
        "formula": "score ~ (1 | school)",
        "family": "t",
        "sampler": {"draws": 8_000, "tune": 1000, "chains": 2} | sampler,
    }
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    location: str = response.headers["location"]
    return location


def running(attempt: int) -> Any:
    return lambda fit: fit["status"] == "running" and fit["attempts"] == attempt


def kill_pool(deployment: Deployment) -> None:
    children = pool_children(deployment.processes["worker-fits"].pid)
    assert children, "the fit worker has no pool process"
    for child in children:
        os.kill(child.pid, signal.SIGKILL)


def test_a_killed_pool_process_is_retried_and_the_fit_succeeds(
    deployment: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    location = submit(client, seed_records)
    wait_for_status(client, location, running(1))
    kill_pool(deployment)
    fit = wait_for_fit(client, location)
    assert fit["status"] == "succeeded"
    assert fit["attempts"] == 2


def test_a_fit_that_always_kills_its_worker_fails_after_bounded_attempts(
    deployment: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    location = submit(client, seed_records, seed=77)
    for attempt in (1, 2, 3):
        wait_for_status(client, location, running(attempt))
        kill_pool(deployment)
    fit = wait_for_fit(client, location)
    assert fit["status"] == "failed"
    assert fit["error"]["reason"] == "worker_lost"
    assert fit["attempts"] == 4  # the fourth delivery gave up without running


def test_a_whole_worker_killed_is_replaced_and_its_fit_picked_up_quickly(
    deployment: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    location = submit(client, seed_records, seed=78)
    wait_for_status(client, location, running(1))
    main = deployment.processes.pop("worker-fits")
    for process in [*pool_children(main.pid)]:
        os.kill(process.pid, signal.SIGKILL)
    main.send_signal(signal.SIGKILL)
    main.wait()
    killed_at = time.monotonic()
    deployment.start_fits_worker()
    # lock TTL 3 s + reconciler every 1 s here: far below Redis's visibility timeout
    fit = wait_for_status(client, location, running(2), timeout_s=60)
    assert time.monotonic() - killed_at < 30
    assert wait_for_fit(client, fit["links"]["self"])["status"] == "succeeded"


def test_sigterm_lets_the_running_fit_finish(
    deployment: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    location = submit(client, seed_records, seed=79)
    wait_for_status(client, location, running(1))
    deployment.stop("worker-fits")  # SIGTERM: Celery's warm shutdown waits for the task
    fit = client.get(location).json()
    assert fit["status"] == "succeeded", fit
    assert fit["attempts"] == 1
    deployment.start_fits_worker()


def test_cancelling_a_running_fit_stops_sampling_and_the_worker_lives_on(
    client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    location = submit(client, seed_records, seed=80)
    wait_for_status(
        client, location, lambda f: (f.get("progress") or {}).get("phase") == "sampling"
    )
    asked = time.monotonic()
    assert client.delete(location).status_code == 202
    fit = wait_for_status(client, location, lambda f: f["status"] == "cancelled", timeout_s=30)
    assert time.monotonic() - asked < 5
    assert fit["attempts"] == 1
    follow_up = submit(client, seed_records, draws=300, seed=81)
    assert wait_for_fit(client, follow_up)["status"] == "succeeded"


def test_a_cancelled_queued_fit_never_starts(
    client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    busy = submit(client, seed_records, seed=82)
    waiting = submit(client, seed_records, seed=83)
    assert client.get(waiting).json()["status"] == "queued"
    assert client.delete(waiting).json()["status"] == "cancelled"
    client.delete(busy)
    wait_for_status(client, busy, lambda f: f["status"] == "cancelled", timeout_s=60)
    time.sleep(1)
    fit = client.get(waiting).json()
    assert (fit["status"], fit["attempts"], fit["started_at"]) == ("cancelled", 0, None)


def test_a_fit_past_its_time_limit_fails_with_timeout_and_is_not_retried(
    client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    # A structure no other test compiles (Student-t), and 80,000 iterations: well past 1 s.
    body = {
        "data": seed_records,
        "formula": "score ~ (1 | school)",
        "family": "t",
        "sampler": {"draws": 20_000, "tune": 20_000, "chains": 2, "seed": 84, "time_limit_s": 1},
    }
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    fit = wait_for_fit(client, response.headers["location"])
    assert fit["status"] == "failed"
    assert fit["error"]["reason"] == "timeout"
    assert fit["attempts"] == 1


def test_fifty_identical_concurrent_submissions_are_one_fit_and_one_run(
    deployment: Deployment, seed_records: list[dict[str, Any]]
) -> None:
    body = {
        "data": seed_records,
        "formula": "score ~ (1 | school)",
        "sampler": {"draws": 200, "tune": 200, "chains": 2, "seed": 4242},
    }

    def post(_: int) -> str:
        with deployment.client() as client:
            response = client.post("/v1/fits", json=body)
            assert response.status_code == 202
            fit_id: str = response.json()["id"]
            return fit_id

    with ThreadPoolExecutor(max_workers=50) as pool:
        ids = set(pool.map(post, range(50)))
    assert len(ids) == 1
    with deployment.client() as client:
        fit = wait_for_fit(client, f"/v1/fits/{ids.pop()}")
    assert fit["status"] == "succeeded"
    assert fit["attempts"] == 1


def test_a_second_delivery_of_a_running_fit_does_not_start_a_second_run(
    deployment: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    # What Redis does when a fit outlives the visibility timeout, and RabbitMQ when a worker's
    # connection drops: deliver its message again.
    from celery import Celery

    deployment.start_fits_worker("worker-fits-2")
    try:
        location = submit(client, seed_records, seed=85)
        wait_for_status(client, location, running(1))
        fit_id = location.rsplit("/", 1)[1]
        Celery(broker=deployment.broker_url).send_task("hbm.fit", args=[fit_id], queue="hbm.fits")
        deadline = time.monotonic() + 30
        while deployment.queue_depth("hbm.fits") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert deployment.queue_depth("hbm.fits") == 0  # the free worker took the duplicate...
        assert client.get(location).json()["status"] == "running"  # ...while the run went on
        fit = wait_for_fit(client, location)
        assert fit["status"] == "succeeded"
        assert fit["attempts"] == 1  # the duplicate found the run lock held and stood down
    finally:
        deployment.stop("worker-fits-2")
