"""Worker memory over consecutive fits: is the fit worker's RSS flat?

``python -m bench.rss [--fits 100]`` starts the service, runs small seed-study fits one
after another through HTTP, and records the resident memory of the fits worker's pool
process after each; JSON goes to ``bench/results/rss-<UTC time>.json``. The pool process
is replaced after ``HBM_TASKS_PER_CHILD`` tasks (200 by default) or when it is above
``HBM_WORKER_RECYCLE_RSS_MB`` after a task; the output notes replacements (pid changes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.report import save
from bench.seed import load_records
from bench.service_run import FINAL, deployment, pool_children, wait_until_ready


def run(fits: int) -> dict[str, Any]:
    """Run ``fits`` fits in a row; RSS (MiB) and pid of the pool process after each."""
    records = load_records()
    samples: list[dict[str, Any]] = []
    with deployment() as running:
        wait_until_ready(running)
        with httpx.Client(base_url=running.base_url, timeout=120) as client:
            for seed in range(fits):
                body = {
                    "data": records,
                    "formula": "score ~ (1 | school)",
                    "sampler": {"draws": 500, "tune": 500, "chains": 4, "seed": seed},
                }
                location = client.post("/v1/fits", json=body).headers["location"]
                while client.get(location).json()["status"] not in FINAL:
                    time.sleep(0.1)
                (child,) = pool_children(running)
                samples.append({"pid": child.pid, "rss_mb": child.memory_info().rss / 1024**2})
    rss = [s["rss_mb"] for s in samples]
    first, last = statistics.mean(rss[:10]), statistics.mean(rss[-10:])
    return {
        "date": datetime.now(UTC).isoformat(),
        "fits": fits,
        "first10_mean_mb": first,
        "last10_mean_mb": last,
        "growth_pct": 100 * (last - first) / first,
        "max_mb": max(rss),
        "pool_processes": len({s["pid"] for s in samples}),
        "samples": samples,
    }


def main() -> None:
    """Run and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fits", type=int, default=100)
    report = run(parser.parse_args().fits)
    save("rss", report)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
