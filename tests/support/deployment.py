"""A real deployment of the service for end-to-end tests and benchmarks: the API and the
workers as separate processes, started with the same entrypoints as ``make run``, compose
and the Dockerfile (``python -m service``, ``python -m worker fits|interactive``), against
a real Redis (the broker too, unless ``HBM_BROKER_URL`` names a RabbitMQ), with files under
a folder of the caller's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from redis import Redis

from service.core.broker import queue_depths
from service.core.settings import Settings
from service.launcher import free_port

ROOT = Path(__file__).resolve().parents[2]
QUEUES = {"fits": "hbm.fits", "interactive": "hbm.interactive"}

__all__ = ["Deployment", "deploy", "free_port", "pool_children"]


@dataclass
class Deployment:
    """A running API and its workers."""

    base_url: str
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def broker_url(self) -> str:
        """The broker's URL: ``HBM_BROKER_URL``, or the Redis."""
        return self.env.get("HBM_BROKER_URL") or self.env["REDIS_URL"]

    def queue_depth(self, queue: str) -> int:
        """Messages waiting in a broker queue (LLEN on Redis; RabbitMQ's message count)."""
        settings = Settings(redis_url=self.env["REDIS_URL"], broker_url=self.broker_url)
        return queue_depths(settings, queues=[queue])[queue]

    def wait_idle(self, name: str, timeout_s: float = 60) -> None:
        """Until worker ``name`` has no task running nor any message reserved (acknowledged
        all it took), asked through Celery's remote control (either broker)."""
        from celery import Celery

        node = f"-{self.processes[name].pid}@{socket.gethostname()}"  # role-<pid>@host
        control = Celery(broker=self.broker_url).control
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            inspect = control.inspect(timeout=1)
            answers = [inspect.active() or {}, inspect.reserved() or {}]
            mine = [tasks for answer in answers for n, tasks in answer.items() if n.endswith(node)]
            if len(mine) == 2 and not any(mine):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} stayed busy:\n{self.log_tail(name)}")

    def client(self, timeout_s: float = 120) -> httpx.Client:
        """An HTTP client for the API."""
        return httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m <args>`` as process ``name``, logging to a file; ``env``
        overrides some of the deployment's settings for this process (as on another host)."""
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=self.env | (env or {}),
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        self.processes[name] = process
        return process

    def start_worker(
        self, name: str, role: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m worker <role>`` and wait until it announces itself in Redis
        (after its warm-up, once it consumes its queue)."""
        process = self.start(name, "worker", role, env=env)
        redis = Redis.from_url(self.env["REDIS_URL"])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            live = redis.zrangebyscore(f"hbm:workers:{QUEUES[role]}", time.time(), "+inf")
            if any(member.decode().endswith(f":{process.pid}") for member in live):
                return process
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not start:\n{self.log_tail(name)}")

    def start_fits_worker(self, name: str = "worker-fits") -> subprocess.Popen[bytes]:
        """(Re)start a fit worker and wait until it consumes its queue."""
        return self.start_worker(name, "fits")

    def stop(self, name: str) -> None:
        """SIGTERM one process and wait for it (SIGKILL after a minute)."""
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        """Stop every process, the API first."""
        for name in reversed(list(self.processes)):
            self.stop(name)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        """The end of a process's log, for error messages."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def wait_until(self, path: str = "/v1/healthz", timeout_s: float = 60) -> None:
        """Until ``GET path`` answers 200 (health: the API is up; ``/v1/readyz``: Redis,
        storage and both workers are too)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base_url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{path} did not answer 200:\n{self.log_tail('api')}")


def pool_children(pid: int) -> list[psutil.Process]:
    """The Celery pool processes (the ones that run tasks) of a worker's main process."""
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def deploy(folder: Path, url: str, **settings: str) -> Deployment:
    """Start both workers and the API on Redis at ``url``, with files under ``folder``;
    ``settings`` are extra environment variables (``HBM_...``)."""
    port = free_port()
    env = dict(os.environ)
    env.pop("HBM_REDIS_URL", None)
    env.pop("HBM_BROKER_URL", None)  # Redis unless ``settings`` name another broker
    env.update(
        REDIS_URL=url,
        HBM_DATA_DIR=str(folder / "data"),
        PORT=str(port),
        HOST="127.0.0.1",
        LOG_LEVEL="warning",
        **settings,
    )
    running = Deployment(f"http://127.0.0.1:{port}", env, folder)
    try:
        running.start_fits_worker()
        running.start_worker("worker-interactive", "interactive")
        running.start("api", "service")
        running.wait_until()
    except BaseException:
        running.stop_all()
        raise
    return running
