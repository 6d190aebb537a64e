"""How long the API takes to serve a large stored result (1,000 group levels).

``python -m bench.serving [--levels 1000] [--repeat 50]`` stores synthetic results of one
succeeded fit with a factor of ``--levels`` levels (its summary, group effects and
diagnostics, shaped as the worker writes them), then times ``GET /summary``,
``GET /groups/g`` and ``GET /diagnostics`` in-process (FastAPI's test client, Redis
database 13), median and max over ``--repeat`` requests each. The same script runs on an
older tree to compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis

from service.api.app import create_app
from service.core.artifacts import Artifacts
from service.core.jobs import JobStore, new_fit_id
from service.core.schemas import FitSpec, FitStatus, ResolvedSampler

REDIS_URL = "redis://127.0.0.1:6379/13"


def estimate(i: int) -> dict[str, float]:
    return {"mean": 0.1 * i, "sd": 0.2, "lower": 0.1 * i - 0.4, "upper": 0.1 * i + 0.4}


def results(fit_id: str, levels: int) -> dict[str, Any]:
    """Result files shaped as the worker writes them."""
    interval = {"kind": "hdi", "prob": 0.94}
    names = ["Intercept", "x", "1|g_sigma", "sigma"]
    parameters = [
        {**estimate(i), "name": n, "kind": "fixed", "term": n, "level": None,
         "mcse_mean": 0.001, "mcse_sd": 0.001}
        for i, n in enumerate(names)
    ]  # fmt: skip
    group_levels = [
        {
            "level": f"g{i}",
            "n_obs": 100,
            "effects": [{"term": "1|g", "ranef": estimate(i), "coef": estimate(i + 1)}],
        }
        for i in range(levels)
    ]
    diagnostics = [
        {"name": f"1|g[g{i}]", "r_hat": 1.001, "ess_bulk": 3900.0, "ess_tail": 3100.0,
         "mcse_mean": 0.002}
        for i in range(levels)
    ]  # fmt: skip
    return {
        "summary.json": {"fit_id": fit_id, "interval": interval, "parameters": parameters},
        "groups.json": {
            "g": {"fit_id": fit_id, "factor": "g", "interval": interval, "levels": group_levels}
        },
        "diagnostics.json": {
            "fit_id": fit_id,
            "verdict": "pass",
            "warnings": [],
            "chains": 4,
            "draws": 1000,
            "divergences": 0,
            "max_treedepth_hits": 0,
            "ebfmi": [1.0] * 4,
            "max_r_hat": 1.001,
            "min_ess_bulk": 3900.0,
            "min_ess_tail": 3100.0,
            "parameters": diagnostics,
        },
    }


def run(levels: int, repeat: int) -> dict[str, dict[str, float]]:
    """Store the results, time each route; milliseconds by route."""
    Redis.from_url(REDIS_URL).flushdb()
    with tempfile.TemporaryDirectory(prefix="hbm-serving-") as folder:
        from service.core.settings import Settings

        settings = Settings(redis_url=REDIS_URL, data_dir=Path(folder))
        app = create_app(settings)
        store: JobStore = app.state.services.store
        artifacts = Artifacts(Path(folder))
        fit_id = new_fit_id()
        sampler = ResolvedSampler(
            draws=1000, tune=1000, chains=4, seed=1, target_accept=0.8, method="nutpie"
        )
        spec = FitSpec(
            formula="y ~ x + (1 | g)", family="gaussian", link="identity",
            columns={"y": [1.0], "x": [1.0], "g": ["g0"]}, sampler=sampler,
        )  # fmt: skip
        store.create(fit_id, spec)
        store.start_attempt(fit_id)
        files = results(fit_id, levels)
        try:  # this tree stores each factor's effects in a file of its own
            from service.core.artifacts import group_file  # type: ignore[attr-defined]

            files[group_file(0)] = files["groups.json"]["g"]
            files["groups.json"] = {"g": group_file(0)}
        except ImportError:
            pass
        for name, body in files.items():
            artifacts.write_bytes(fit_id, name, json.dumps(body).encode())
        store.finish(fit_id, FitStatus.SUCCEEDED)
        timings: dict[str, dict[str, float]] = {}
        with TestClient(app) as client:
            for route in ("summary", "groups/g", "diagnostics"):
                seconds = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    response = client.get(f"/v1/fits/{fit_id}/{route}")
                    seconds.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                timings[route] = {
                    "median_ms": round(1000 * statistics.median(seconds), 2),
                    "max_ms": round(1000 * max(seconds), 2),
                    "bytes": len(response.content),
                }
    return timings


def main() -> None:
    """Parse the options and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=50)
    options = parser.parse_args()
    print(json.dumps(run(options.levels, options.repeat), indent=2))


if __name__ == "__main__":
    main()
