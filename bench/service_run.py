"""The real service end to end over HTTP: API + fits worker + interactive worker on Redis.

The deployment is started here with the same entry points as ``make run`` and the tests
(``python -m service``, ``python -m worker fits|interactive``), one per case. Two fits of the
case are timed: the first on a fresh worker ("cold") and the same case with another seed
right after ("warm", same worker process: it reuses the model compiled for the same
structure, and the fit's ``timings.compiled`` says so).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.cases import CHAINS, DRAWS, TUNE, Case
from bench.peak_rss import reset_peak_rss, watch_peak_rss
from bench.stats import summarize_parameters
from tests.support.deployment import Deployment, deploy, free_port

__all__ = ["Deployment", "deployment", "free_port", "pool_children", "run_service"]

REDIS_URL = "redis://127.0.0.1:6379/13"
POLL_S = 0.05
FINAL = ("succeeded", "failed", "cancelled")


@contextmanager
def deployment(settings: dict[str, str] | None = None) -> Iterator[Deployment]:
    """An API and both workers on a flushed Redis database and a temporary data dir;
    ``settings`` are extra environment variables (``HBM_...``) for all three."""
    from redis import Redis

    Redis.from_url(REDIS_URL).flushdb()
    with tempfile.TemporaryDirectory(prefix="hbm-bench-") as folder:
        running = deploy(Path(folder), REDIS_URL, **(settings or {}))
        try:
            yield running
        finally:
            running.stop_all()


def wait_until_ready(running: Deployment, timeout_s: float = 180) -> None:
    """Wait until the API says it is ready (Redis, storage, both workers)."""
    running.wait_until("/v1/readyz", timeout_s)


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
    started = time.perf_counter()
    with deployment() as running:
        wait_until_ready(running)
        startup_s = time.perf_counter() - started  # processes started and workers warm
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
