"""Faults injected for real into a running deployment: the interactive worker stopped or
killed while calls wait on it, damaged files, a DELETE racing a fit's end, and limits that
must hold while a model compiles (a phase that cannot be interrupted from inside)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from redis import Redis

from tests.e2e.conftest import (
    QUICK,
    Deployment,
    pool_children,
    wait_for_fit,
    wait_for_status,
)

pytestmark = pytest.mark.e2e


def seed_fit(client: httpx.Client, records: list[dict[str, Any]], seed: int) -> str:
    """A quick seed-study fit (its structure is compiled once per worker)."""
    body = {"data": records, "formula": "score ~ (1 | school)", "sampler": QUICK | {"seed": seed}}
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    location: str = response.headers["location"]
    return location


def fit_folder(deployment: Deployment, location: str) -> Path:
    return Path(deployment.env["HBM_DATA_DIR"]) / "fits" / location.rsplit("/", 1)[1]


@contextmanager
def stopped(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """The process and its children stopped (SIGSTOP) inside the block."""
    family = [psutil.Process(process.pid), *pool_children(process.pid)]
    for member in family:
        member.suspend()
    try:
        yield
    finally:
        for member in family:
            member.resume()


# ------------------------------------------------------------------- interactive worker


def test_calls_fail_fast_when_no_worker_answers_and_health_never_waits(
    deployment: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    location = seed_fit(client, seed_records, 201)
    assert wait_for_fit(client, location)["status"] == "succeeded"
    rows = {"data": {"school": [1, 2, 999]}}
    with stopped(deployment.processes["worker-interactive"]):
        time.sleep(4)  # its presence (3 s here) runs out: it is seen dead

        def predict(_: int) -> tuple[int, float]:
            with deployment.client() as own:
                asked = time.monotonic()
                response = own.post(location + "/predictions", json=rows)
                return response.status_code, time.monotonic() - asked

        with ThreadPoolExecutor(max_workers=60) as pool:
            pending = pool.map(predict, range(60))
            health = []
            for _ in range(20):
                asked = time.monotonic()
                assert client.get("/v1/healthz").status_code == 200
                health.append(time.monotonic() - asked)
                time.sleep(0.1)
            answers = list(pending)
    assert max(health) < 0.5, health  # never behind the waiting calls
    codes = {code for code, _ in answers}
    assert codes <= {429, 503}, answers  # no live worker: refused at once, nothing waits
    assert max(seconds for _, seconds in answers) < 3, answers
    # once the worker is back, calls are answered again
    deadline = time.monotonic() + 30
    while client.post(location + "/predictions", json=rows).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("whole_worker", "when"),
    [(False, "computing"), (True, "computing"), (True, "fetched, not started")],
)
def test_a_call_whose_worker_is_killed_is_answered_by_its_replacement(
    deployment: Deployment,
    client: httpx.Client,
    seed_records: list[dict[str, Any]],
    whole_worker: bool,
    when: str,
) -> None:
    """Killed while computing the call (it has claimed it), or after its main process
    fetched the message but before any pool process started it (a dead worker keeps such a
    message until Redis's visibility timeout; RabbitMQ hands it out again when the worker's
    connection closes): either way the call is answered, by the pool
    process Celery starts again or by the worker started in the dead one's place."""
    body = {
        "data": seed_records,
        "formula": "score ~ (1 | school)",
        "sampler": {"draws": 2000, "tune": 300, "chains": 2, "seed": 202},
    }
    location = client.post("/v1/fits", json=body).headers["location"]
    assert wait_for_fit(client, location)["status"] == "succeeded"
    rows = {"data": {"school": [1 + i % 40 for i in range(20_000)]}, "kind": "response"}
    redis = Redis.from_url(deployment.env["REDIS_URL"])
    claimed_before = set(redis.keys("hbm:call:*"))
    main = deployment.processes["worker-interactive"]
    if when != "computing":  # the pool process cannot start anything
        # once idle: the last call's reply may be out before its message is acknowledged,
        # and a call whose worker died may be computed twice (RabbitMQ hands it out again
        # and the API sends it again)
        deployment.wait_idle("worker-interactive")
        for child in pool_children(main.pid):
            os.kill(child.pid, signal.SIGSTOP)
    with ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(client.post, location + "/predictions", json=rows)
        deadline = time.monotonic() + 60
        if when == "computing":
            while not set(redis.keys("hbm:call:*")) - claimed_before:
                assert time.monotonic() < deadline, "no worker took the call"
                time.sleep(0.02)
        else:
            time.sleep(0.5)
            while deployment.queue_depth("hbm.interactive"):
                assert time.monotonic() < deadline, "the worker did not fetch the call"
                time.sleep(0.02)
        for child in pool_children(main.pid):
            os.kill(child.pid, signal.SIGKILL)
        if whole_worker:  # the whole worker dies and is started again
            main.kill()
            main.wait()
            deployment.processes.pop("worker-interactive")
            deployment.start_worker("worker-interactive", "interactive")
        response = answer.result(timeout=150)
    assert response.status_code == 200, response.text
    assert len(response.json()["rows"]) == 20_000


# --------------------------------------------------------------------------- damaged files


def test_damaged_files_are_a_clear_permanent_error_not_an_outage(
    deployment: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    location = seed_fit(client, seed_records, 203)
    assert wait_for_fit(client, location)["status"] == "succeeded"
    folder = fit_folder(deployment, location)
    for name in ("posterior.nc", "summary.json"):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 3])
    calls = [
        client.post(location + "/predictions", json={"data": {"school": [1]}}),
        client.get(location + "/summary", params={"prob": 0.5}),
        client.get(location + "/summary"),
    ]
    for response in calls:
        assert response.status_code == 500, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" not in response.headers
        assert "damaged" in response.json()["detail"]
    # the connection and the service carry on
    assert client.get(location).status_code == 200
    assert client.get(location + "/diagnostics").status_code == 200


# ------------------------------------------------------------------ DELETE against the end


def test_a_delete_racing_the_end_of_a_fit_gets_the_answer_of_its_final_state(
    deployment: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    """Half the DELETEs are sent as soon as a fit is seen summarizing (its results being
    written), the others at a random moment of its run: whichever side wins, a 202 ends
    cancelled with no results left, a 204 means the fit had finished and is gone."""
    rng = random.Random(7)
    for i, seed in enumerate(range(300, 314)):
        location = seed_fit(client, seed_records, seed)
        if i % 2:
            wait_for_status(client, location, lambda f: f["status"] != "queued", timeout_s=120)
            time.sleep(rng.uniform(0.0, 0.8))
        else:
            wait_for_status(
                client,
                location,
                lambda f: (
                    (f.get("progress") or {}).get("phase") == "summarizing"
                    or f["status"] in ("succeeded", "failed", "cancelled")
                ),
                timeout_s=120,
                poll_s=0.005,
            )
        answer = client.delete(location)
        folder = fit_folder(deployment, location)
        if answer.status_code == 202:
            fit = wait_for_fit(client, location)
            assert fit["status"] == "cancelled", fit
            leftovers = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
            assert leftovers in ([], ["spec.json"]), leftovers
        else:
            assert answer.status_code == 204, answer.text
            assert client.get(location).status_code == 404
            assert not folder.exists()


# --------------------------------------------------------------- limits while compiling


def positive_data(n_groups: int = 12, per_group: int = 10) -> dict[str, list[Any]]:
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(n_groups), per_group)
    x = rng.normal(size=g.size)
    y = np.exp(0.3 + 0.2 * x + rng.normal(0, 0.3, n_groups)[g] + rng.normal(0, 0.2, g.size))
    return {"g": [f"g{i}" for i in g], "x": x.round(4).tolist(), "y": y.round(4).tolist()}


def compiling(fit: dict[str, Any]) -> bool:
    return (fit.get("progress") or {}).get("phase") == "compiling"


@pytest.mark.parametrize(
    ("family", "formula"),
    [("gamma", "y ~ x + (1 + x | g)"), ("negativebinomial", "y ~ x + (1 | g)")],
)
def test_a_cancel_while_compiling_ends_the_fit_within_seconds(
    client: httpx.Client, seed_records: list[dict[str, Any]], family: str, formula: str
) -> None:
    data = positive_data()
    if family == "negativebinomial":
        data["y"] = [round(v * 3) for v in data["y"]]
    body = {"data": data, "formula": formula, "family": family, "sampler": QUICK | {"seed": 1}}
    location = client.post("/v1/fits", json=body).headers["location"]
    wait_for_status(client, location, compiling, timeout_s=120)
    asked = time.monotonic()
    assert client.delete(location).status_code == 202
    fit = wait_for_status(client, location, lambda f: f["status"] == "cancelled", timeout_s=30)
    assert time.monotonic() - asked < 5, fit
    assert fit["attempts"] == 1
    follow_up = seed_fit(client, seed_records, 209 + len(formula))
    assert wait_for_fit(client, follow_up)["status"] == "succeeded"  # the worker lives on


def test_a_time_limit_holds_while_compiling(client: httpx.Client) -> None:
    body = {
        "data": positive_data(),
        "formula": "y ~ x + (1 | g) + (0 + x | g)",
        "family": "gamma",
        "link": "log",
        "sampler": QUICK | {"seed": 2, "time_limit_s": 1},
    }
    location = client.post("/v1/fits", json=body).headers["location"]
    fit = wait_for_fit(client, location, timeout_s=120)
    assert (fit["status"], fit["error"]["reason"]) == ("failed", "timeout"), fit
    took = datetime.fromisoformat(fit["finished_at"]) - datetime.fromisoformat(fit["started_at"])
    assert took.total_seconds() < 4, took
