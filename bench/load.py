"""Load: 1,000 submissions from 50 concurrent clients against the real service.

``python -m bench.load [--submissions 1000] [--clients 50]`` starts the API and workers
(as ``make run`` does), has the clients submit small distinct fits at once, then waits until
every accepted fit is final. It reports accepted and refused (429) counts, submit latency
percentiles, drain time, and whether any fit was lost or duplicated; JSON goes to
``bench/results/load-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.report import save
from bench.seed import FORMULA, load_records
from bench.service_run import FINAL, deployment, wait_until_ready


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tiny_fit_body(records: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """A small, quick fit: the given seed-study rows, 1 chain x (100 tune + 100 draws)."""
    return {
        "data": records,
        "formula": FORMULA,
        "sampler": {"draws": 100, "tune": 100, "chains": 1, "seed": seed},
    }


def run(submissions: int, clients: int) -> dict[str, Any]:
    """Submit, drain, and check; the figures as a dict."""
    records = load_records()[:120]
    with deployment() as running:
        wait_until_ready(running)

        def submit(i: int) -> tuple[int, float, str | None]:
            body = tiny_fit_body(records, i)
            started = time.perf_counter()
            with httpx.Client(base_url=running.base_url, timeout=60) as client:
                answer = client.post("/v1/fits", json=body)
            elapsed = time.perf_counter() - started
            fit_id = answer.json().get("id") if answer.status_code == 202 else None
            return answer.status_code, elapsed, fit_id

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            answers = list(pool.map(submit, range(submissions)))
        submitted_s = time.perf_counter() - started
        accepted = [fit_id for status, _, fit_id in answers if fit_id]
        statuses: dict[str, str] = {}
        with httpx.Client(base_url=running.base_url, timeout=60) as client:
            pending = set(accepted)
            while pending:
                for fit_id in list(pending):
                    status = client.get(f"/v1/fits/{fit_id}").json()["status"]
                    if status in FINAL:
                        statuses[fit_id] = status
                        pending.discard(fit_id)
                time.sleep(0.5)
            listed = client.get("/v1/fits", params={"limit": 100}).json()
        drained_s = time.perf_counter() - started
    latencies = [elapsed for _, elapsed, _ in answers]
    codes: dict[str, int] = {}
    for status, _, _ in answers:
        codes[str(status)] = codes.get(str(status), 0) + 1
    return {
        "date": datetime.now(UTC).isoformat(),
        "submissions": submissions,
        "clients": clients,
        "status_codes": codes,
        "accepted": len(accepted),
        "duplicates": len(accepted) - len(set(accepted)),
        "final": {s: list(statuses.values()).count(s) for s in set(statuses.values())},
        "lost": len(accepted) - len(statuses),
        "listed_sample": len(listed),
        "submit_p50_ms": 1000 * statistics.median(latencies),
        "submit_p99_ms": 1000 * percentile(latencies, 0.99),
        "submit_phase_s": submitted_s,
        "drain_s": drained_s,
    }


def main() -> None:
    """Run the load benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    report = run(args.submissions, args.clients)
    save("load", report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
