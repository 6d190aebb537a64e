"""A real deployment for end-to-end tests: the API and two Celery workers (fits and
interactive), started as separate processes with the same entrypoints as ``make run`` and
the Dockerfile, against a real Redis. Fits use small draws to stay fast."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from redis import Redis

from tests.conftest import ROOT, clean_redis, redis_url

pytestmark = pytest.mark.e2e

#: Small but honest MCMC settings for tests.
QUICK = {"draws": 300, "tune": 300, "chains": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Deployment:
    """A running API and its workers."""

    base_url: str
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``python -m <args>`` as process ``name``, logging to a file."""
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", *args], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )
        self.processes[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def start_fits_worker(self, name: str = "worker-fits") -> subprocess.Popen[bytes]:
        """(Re)start a fit worker and wait until it consumes its queue."""
        return self.start_worker(name, "fits")

    def start_worker(self, name: str, role: str) -> subprocess.Popen[bytes]:
        """Start ``python -m worker <role>`` and wait until it announces itself in Redis
        (after its warm-up, once it consumes its queue)."""
        process = self.start(name, "worker", role)
        redis = Redis.from_url(self.env["REDIS_URL"])
        queue = {"fits": "hbm.fits", "interactive": "hbm.interactive"}[role]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            live = redis.zrangebyscore(f"hbm:workers:{queue}", time.time(), "+inf")
            if any(member.decode().endswith(f":{process.pid}") for member in live):
                return process
            if process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not start: see {self.logs / name}.log")


def pool_children(pid: int) -> list[psutil.Process]:
    """The Celery pool processes (the ones that run tasks) of a worker's main process."""
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def deploy(folder: Path, url: str, **settings: str) -> Deployment:
    """Start the API and both workers on Redis at ``url``, with files under ``folder``;
    ``settings`` are extra environment variables (``HBM_...``)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        REDIS_URL=url,
        HBM_DATA_DIR=str(folder / "data"),
        PORT=str(port),
        HOST="127.0.0.1",
        LOG_LEVEL="warning",
        # Fault tests want a lost worker, a hung Redis or a slow client noticed in
        # seconds, not after the production timeouts.
        HBM_LOCK_TTL_S="3",
        HBM_LOCK_GRACE_S="2",
        HBM_RECONCILE_INTERVAL_S="1",
        HBM_REDIS_TIMEOUT_S="1",
        HBM_WORKER_PRESENCE_TTL_S="3",
        HBM_HEADER_TIMEOUT_S="3",
        HBM_BODY_TIMEOUT_S="6",
        **settings,
    )
    env.pop("HBM_REDIS_URL", None)
    running = Deployment(f"http://127.0.0.1:{port}", env, folder, {})
    running.start_fits_worker()
    running.start_worker("worker-interactive", "interactive")
    running.start("api", "service")
    _wait_for_health(running)
    return running


def deployed(
    tmp_path_factory: pytest.TempPathFactory, db: int, **settings: str
) -> Iterator[Deployment]:
    """A deployment on an emptied Redis database ``db``, stopped when the fixture ends."""
    url = redis_url(db)
    clean_redis(url)
    running = deploy(tmp_path_factory.mktemp(f"deployment-{db}"), url, **settings)
    yield running
    for name in list(running.processes):
        running.stop(name)


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from deployed(tmp_path_factory, 15)


def _wait_for_health(running: Deployment, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(running.base_url + "/v1/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    logs = (running.logs / "api.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the API did not start:\n{logs}")


@pytest.fixture
def client(deployment: Deployment) -> Iterator[httpx.Client]:
    with deployment.client() as http:
        yield http


def wait_for_status(
    client: httpx.Client,
    location: str,
    accept: Callable[[dict[str, Any]], bool],
    timeout_s: float = 120,
) -> dict[str, Any]:
    """Poll a fit until ``accept`` holds for its record; return that record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fit: dict[str, Any] = client.get(location).json()
        if accept(fit):
            return fit
        time.sleep(0.1)
    raise AssertionError(f"fit {location} never reached the expected state: {fit}")


def wait_for_fit(client: httpx.Client, location: str, timeout_s: float = 300) -> dict[str, Any]:
    """Poll a fit until it reaches a final status; return its last record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fit: dict[str, Any] = client.get(location).json()
        if fit["status"] in ("succeeded", "failed", "cancelled"):
            return fit
        time.sleep(0.3)
    raise AssertionError(f"fit {location} did not finish in {timeout_s} s")
