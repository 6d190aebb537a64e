"""The real service end to end over HTTP: API + fits worker + interactive worker on Redis.

The deployment is started here with the same entry points as ``make run`` and the tests
(``python -m service``, ``python -m worker fits|interactive``), one per case. Two fits of the
case are timed: the first on a fresh worker ("cold") and the same case with another seed
right after ("warm", same worker process: it reuses the model compiled for the same
structure, and the fit's ``timings.compiled`` says so).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.cases import CHAINS, DRAWS, TUNE, Case
from bench.peak_rss import reset_peak_rss, watch_peak_rss
from bench.seed import ROOT
from bench.stats import summarize_parameters

REDIS_URL = "redis://127.0.0.1:6379/13"
POLL_S = 0.05
FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Deployment:
    """The running API and workers, and where their logs go."""

    base_url: str
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> None:
        """Start ``python -m <args>`` as process ``name``, logging to a file."""
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", *args], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )

    def stop(self) -> None:
        """Terminate every process, then wait for it (kill after 30 s)."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def log_tail(self, name: str, chars: int = 1500) -> str:
        """The end of a process's log, for error messages."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def deployment(settings: dict[str, str] | None = None) -> Iterator[Deployment]:
    """An API and both workers on a flushed Redis database and a temporary data dir;
    ``settings`` are extra environment variables (``HBM_...``) for all three."""
    from redis import Redis

    Redis.from_url(REDIS_URL).flushdb()
    with tempfile.TemporaryDirectory(prefix="hbm-bench-") as folder:
        port = free_port()
        env = dict(os.environ)
        env.pop("HBM_REDIS_URL", None)
        env.update(
            REDIS_URL=REDIS_URL,
            HBM_DATA_DIR=str(Path(folder) / "data"),
            PORT=str(port),
            HOST="127.0.0.1",
            LOG_LEVEL="warning",
        )
        env.update(settings or {})
        running = Deployment(f"http://127.0.0.1:{port}", env, Path(folder))
        try:
            running.start("worker-fits", "worker", "fits")
            running.start("worker-interactive", "worker", "interactive")
            running.start("api", "service")
            yield running
        finally:
            running.stop()


def wait_until_ready(running: Deployment, timeout_s: float = 180) -> None:
    """Wait for the API's health check and for both workers to answer a Celery ping."""
    from celery import Celery

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(running.base_url + "/v1/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError(f"the API did not start:\n{running.log_tail('api')}")
    control = Celery(broker=REDIS_URL).control
    while time.monotonic() < deadline:
        names = {name.split("@")[0] for reply in control.ping(timeout=1.0) for name in reply}
        if {"fits", "interactive"} <= names:
            return
    raise RuntimeError(f"the workers did not start:\n{running.log_tail('worker-fits')}")


def pool_children(running: Deployment) -> list[psutil.Process]:
    """The fits worker's prefork pool processes (the ones that run fits)."""
    return psutil.Process(running.processes["worker-fits"].pid).children(recursive=False)


def fit_body(case: Case, seed: int) -> dict[str, Any]:
    """The ``POST /v1/fits`` body for ``case`` (its data as columns)."""
    return {
        "data": case.columns(),
        "formula": case.formula,
        "family": case.family,
        "sampler": {"draws": DRAWS, "tune": TUNE, "chains": CHAINS, "seed": seed},
    }


def timed_fit(client: httpx.Client, case: Case, seed: int) -> dict[str, Any]:
    """POST a fit and poll it to the end; wall time runs until its summary is served."""
    body = fit_body(case, seed)
    started = time.perf_counter()
    response = client.post("/v1/fits", json=body)
    response.raise_for_status()
    location = response.headers["location"]
    while (fit := client.get(location).json())["status"] not in FINAL:
        time.sleep(POLL_S)
    if fit["status"] != "succeeded":
        raise RuntimeError(f"the fit {fit['status']}: {fit.get('error')}")
    while (summary := client.get(f"{location}/summary")).status_code != 200:
        time.sleep(POLL_S)
    wall_s = time.perf_counter() - started
    diagnostics = client.get(f"{location}/diagnostics").json()
    return {"wall_s": wall_s, **_figures(case, fit, summary.json(), diagnostics)}


def _figures(
    case: Case, fit: dict[str, Any], summary: dict[str, Any], diag: dict[str, Any]
) -> dict[str, Any]:
    means = {p["name"]: p["mean"] for p in summary["parameters"]}
    by_name = {p["name"]: p for p in diag["parameters"]}
    per_param = {
        name: {
            "mean": means[name],
            "ess_bulk": by_name[name]["ess_bulk"],
            "r_hat": by_name[name]["r_hat"],
        }
        for name in case.parameters
    }
    timings = fit["timings"]
    return {
        "fit_id": fit["id"],
        "seed": fit["sampler"]["seed"],
        "timings": timings,
        "build_s": timings.get("build_s"),
        "compile_s": timings.get("compile_s"),
        "compiled": timings.get("compiled"),
        "sampling_s": timings.get("sampling_s"),
        "verdict": diag["verdict"],
        "divergences": diag["divergences"],
        "all_parameters_min_ess_bulk": diag["min_ess_bulk"],
        "all_parameters_max_r_hat": diag["max_r_hat"],
        **summarize_parameters(per_param),
    }


#: Something to measure on the running deployment after the warm fit (its client and id).
After = Callable[[httpx.Client, str], dict[str, Any]]


def run_service(case: Case, after: After | None = None) -> dict[str, dict[str, Any]]:
    """Start the service, time a cold and a warm fit of ``case``, run ``after`` (its result
    under the key ``"after"``), stop it; results by system name."""
    results: dict[str, dict[str, Any]] = {}
    with deployment() as running:
        started = time.perf_counter()
        wait_until_ready(running)
        startup_s = time.perf_counter() - started
        with httpx.Client(base_url=running.base_url, timeout=600) as client:
            for name, seed in (("service-http-cold", 1), ("service-http-warm", 2)):
                reset = reset_peak_rss(pool_children(running))
                try:
                    with watch_peak_rss(lambda: pool_children(running)) as peak:
                        result = timed_fit(client, case, seed)
                except Exception as exc:
                    logs = {n: running.log_tail(n) for n in ("api", "worker-fits")}
                    raise RuntimeError(f"{name}: {exc}\nlogs: {logs}") from exc
                result["peak_rss_mb"] = peak.mb
                result["pool_pids"] = peak.pids
                result["peak_rss_note"] = "VmHWM of the fits worker's pool process" + (
                    ", reset before this fit" if reset else ", since the worker started"
                )
                results[name] = result
            if after is not None:
                results["after"] = after(client, results["service-http-warm"]["fit_id"])
        results["service-http-cold"]["startup_s"] = startup_s
    return results
