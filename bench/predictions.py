"""``predictions-1000``: ``POST /v1/fits/{id}/predictions`` with 1,000 rows on a warm worker.

Run on the seed-study deployment after its warm fit: one warm-up request (the interactive
worker loads the fitted model), then :data:`REPEATS` timed requests; median and max.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx

from bench.seed import load_records

ROWS = 1000
REPEATS = 10
NEW_LABELS = 50


def prediction_body(rows: int = ROWS) -> dict[str, Any]:
    """Half the rows name schools of the seed study, half new school labels."""
    seen = sorted({r["school"] for r in load_records()})
    new = [max(seen) + 1 + i for i in range(NEW_LABELS)]
    schools = [
        seen[i // 2 % len(seen)] if i % 2 == 0 else new[i // 2 % len(new)] for i in range(rows)
    ]
    return {"data": {"school": schools}, "kind": "mean"}


def measure_predictions(client: httpx.Client, fit_id: str) -> dict[str, Any]:
    """Time the requests; the figures and what the answers said about the groups."""
    body = prediction_body()
    url = f"/v1/fits/{fit_id}/predictions"

    def once() -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        response = client.post(url, json=body)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed, response.json()

    warmup_s, answer = once()
    if len(answer["rows"]) != ROWS:
        raise RuntimeError(f"{len(answer['rows'])} predicted rows for {ROWS} sent")
    times = [once()[0] for _ in range(REPEATS)]
    groups = [status for row in answer["rows"] for status in row["groups"].values()]
    return {
        "status": "ok",
        "fit_id": fit_id,
        "rows": ROWS,
        "seen_rows": groups.count("seen"),
        "new_rows": groups.count("new"),
        "kind": body["kind"],
        "warmup_ms": 1000 * warmup_s,
        "requests": REPEATS,
        "median_ms": 1000 * statistics.median(times),
        "max_ms": 1000 * max(times),
        "times_ms": [1000 * t for t in times],
    }
