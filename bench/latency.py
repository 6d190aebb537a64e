"""``api-latency-50-clients``: API latency under 50 concurrent clients, twice 20 s.

Each client (a thread with its own keep-alive ``httpx.Client``; the 50 threads are spread
over :data:`CLIENT_PROCESSES` processes, so that the clients' own GIL does not queue their
requests and add to the measured latency) loops until the time is up,
submitting a tiny fit (``bench.load.tiny_fit_body``) with probability :data:`SUBMIT_SHARE`
and otherwise polling ``GET /v1/fits/{id}`` of a random existing fit. Two phases:
``paced``, where each client waits :data:`THINK_S` between requests (a client polling its
fits twice a second: about 100 requests a second in all), and ``saturated``, with no wait
at all (the API's throughput; latency there is mostly queueing). In the paced phase each
client starts at a random moment within its first wait, as independent clients do: started
on the same instant, 50 clients would keep arriving as one burst every half second, and the
tail would measure that burst's queue (an earlier version did: p99 150-230 ms). The deployment runs
with the per-key quotas raised (:data:`QUOTAS`), so the figures measure the API, not the
quota; the fits worker drains the submitted fits meanwhile, on the same cores. The API
runs as compose runs it, with :data:`API_WORKERS` processes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import httpx

from bench.load import percentile, tiny_fit_body
from bench.seed import load_records
from bench.service_run import deployment, wait_until_ready

CLIENTS = 50
DURATION_S = 20.0
SUBMIT_SHARE = 0.2
PRIMING_FITS = 20
THINK_S = 0.5
CLIENT_PROCESSES = 5
CLIENT_STARTUP_S = 8.0
API_WORKERS = "2"
QUOTAS = {"HBM_SUBMISSIONS_PER_MINUTE": "1000000", "HBM_MAX_ACTIVE_FITS_PER_KEY": "1000000"}

Sample = tuple[str, str, float]  # (submit | status, HTTP status or error name, seconds)


def run_latency(clients: int = CLIENTS, duration_s: float = DURATION_S) -> dict[str, Any]:
    """Start a deployment with raised quotas, load it paced then saturated, stop it."""
    records = load_records()[:120]
    seeds = itertools.count()
    with deployment({**QUOTAS, "HBM_API_WORKERS": API_WORKERS}) as running:
        wait_until_ready(running)
        with httpx.Client(base_url=running.base_url, timeout=60) as client:
            ids = [
                client.post("/v1/fits", json=tiny_fit_body(records, next(seeds))).json()["id"]
                for _ in range(PRIMING_FITS)
            ]
        phases = {
            name: _phase(running.base_url, records, seeds, ids, clients, duration_s, think_s)
            for name, think_s in (("paced", THINK_S), ("saturated", 0.0))
        }
    return {
        "status": "ok",
        "clients": clients,
        "submit_share": SUBMIT_SHARE,
        "think_s": THINK_S,
        "settings": QUOTAS,
        "api_workers": int(API_WORKERS),
        "client_processes": CLIENT_PROCESSES,
        **phases["paced"],
        "saturated": phases["saturated"],
        "note": "per-key quotas raised through the deployment's environment "
        f"({', '.join(f'{k}={v}' for k, v in QUOTAS.items())}) so that this measures the "
        f"API rather than the quota; each client waits {THINK_S} s between requests (the "
        "'saturated' phase: no wait); clients, API and fits worker share the machine's cores; "
        f"{API_WORKERS} API processes; clients in {CLIENT_PROCESSES} processes",
    }


def _phase(
    base_url: str,
    records: list[dict[str, Any]],
    seeds: itertools.count[int],
    ids: list[str],
    clients: int,
    duration_s: float,
    think_s: float,
) -> dict[str, Any]:
    """One load phase: every client loops until ``duration_s`` is up."""
    # CLOCK_MONOTONIC is the same in every process: all clients start together once the
    # client processes have started up (their imports would otherwise load the cores).
    start_at = time.monotonic() + CLIENT_STARTUP_S
    deadline = start_at + duration_s
    first_seed = next(seeds) * 100_000_000  # seeds no other phase or process uses
    groups = [list(range(i, clients, CLIENT_PROCESSES)) for i in range(CLIENT_PROCESSES)]
    spawn = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    with ProcessPoolExecutor(max_workers=CLIENT_PROCESSES, mp_context=spawn) as pool:
        batches = pool.map(
            _client_process,
            [
                (
                    base_url,
                    records,
                    first_seed + 1_000_000 * (i + 1),
                    ids,
                    group,
                    start_at,
                    deadline,
                    think_s,
                )
                for i, group in enumerate(groups)
            ],
        )
        samples = [s for batch in batches for s in batch]
    return {
        "duration_s": duration_s,
        "requests_per_s": len(samples) / duration_s,
        "submit": _figures([s for s in samples if s[0] == "submit"]),
        "status_poll": _figures([s for s in samples if s[0] == "status"]),
    }


def _client_process(
    args: tuple[str, list[dict[str, Any]], int, list[str], list[int], float, float, float],
) -> list[Sample]:
    """One process of clients: a thread per client index, from ``start_at`` until
    ``deadline`` (monotonic clock)."""
    base_url, records, first_seed, ids, indices, start_at, deadline, think_s = args
    seeds = itertools.count(first_seed)

    def client_loop(index: int) -> list[Sample]:
        rng = random.Random(index)
        samples: list[Sample] = []
        with httpx.Client(base_url=base_url, timeout=60) as http:
            time.sleep(max(0.0, start_at - time.monotonic()) + rng.uniform(0.0, think_s))
            while time.monotonic() < deadline:
                submit = rng.random() < SUBMIT_SHARE
                started = time.perf_counter()
                try:
                    if submit:
                        answer = http.post("/v1/fits", json=tiny_fit_body(records, next(seeds)))
                    else:
                        answer = http.get(f"/v1/fits/{rng.choice(ids)}")
                    code = str(answer.status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                samples.append(
                    ("submit" if submit else "status", code, time.perf_counter() - started)
                )
                if submit and code == "202":
                    ids.append(answer.json()["id"])
                time.sleep(think_s)
        return samples

    with ThreadPoolExecutor(max_workers=len(indices)) as threads:
        return [s for batch in threads.map(client_loop, indices) for s in batch]


def _figures(samples: list[Sample]) -> dict[str, Any]:
    """Count, latency percentiles (ms) and answers by status code."""
    seconds = [s for _, _, s in samples]
    if not seconds:
        return {"requests": 0, "codes": {}}
    return {
        "requests": len(seconds),
        "p50_ms": 1000 * percentile(seconds, 0.50),
        "p95_ms": 1000 * percentile(seconds, 0.95),
        "p99_ms": 1000 * percentile(seconds, 0.99),
        "max_ms": 1000 * max(seconds),
        "codes": dict(Counter(code for _, code, _ in samples)),
    }
