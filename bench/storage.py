"""S3 storage against local storage, measured in the same run on the same machine:
``python -m bench.storage [--fits 5] [--calls 50] [--rounds 2] [--redis-url URL]``.

Each round starts one deployment per storage, one after the other (never both at once):
``local`` (``HBM_DATA_DIR``, the default) and ``s3`` (``HBM_STORAGE_URL=s3://...`` on moto's
S3 server, ``tests.support.s3``: a Python server on this machine, so the figures are a lower
bound on the protocol's cost; a real MinIO or S3 over a network adds its round trips). With
two rounds the order is local, s3, s3, local, so that a drift of the machine's load weighs
on both alike. On each deployment:

1. one warm-up fit of the seed study (compile caches) and one warm-up prediction on it
   (the interactive worker's first call), then ``--fits`` fits of ``score ~ (1 | school)``,
   4 chains x 1,000 draws + 1,000 tune, each with its own seed (nothing is deduplicated),
   one after the other: from ``POST /v1/fits`` until the events stream says ``succeeded``
   (and until ``GET /summary`` answers 200), the POST's own answer (the API stores the
   request first), the worker's ``finished_at - started_at``, and what it spent outside
   its ``timings.total_s`` (mostly storing the results) and outside its phases (build,
   compile, sampling, summarizing: the storage reads and writes and the Redis steps); the
   sampling and summarizing seconds are controls that touch no storage (they show when the
   shared machine was busier during one deployment); the stored files and their sizes,
   listed through the storage itself (which checks that they are where the storage says);
2. predictions of 1,000 rows (half seen schools, half new ones, ``kind: mean``): the first
   call on each timed fit is cold (the interactive worker reads the fit's request and
   posterior from storage and builds the model); then ``--calls`` sequential calls on the
   last fit, warm (its cold call was the warm-up): p50, p95, max;
3. ``GET /v1/fits/{id}/summary`` ``--calls`` times after one warm-up (the API reads the
   stored file and the manifest it checks it against, on every request), and
   ``GET /v1/fits/{id}`` as the control that touches Redis only.

Writes ``bench/results/storage-<UTC time>.json`` and prints the table with S3/local ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from bench.cases import CASES, CHAINS, DRAWS, TUNE
from bench.load import percentile
from bench.predictions import prediction_body
from bench.report import save
from bench.service_run import fit_body
from service.core.settings import Settings
from service.core.storage import Storage, storage_for
from tests.support.deployment import Deployment, deploy
from tests.support.s3 import s3_server

REDIS_URL = "redis://127.0.0.1:6379/13"
STORAGES = ("local", "s3")
FITS = 5
CALLS = 50
ROUNDS = 2
WARMUP_SEED = 1000
#: The timed fits' seeds (the same on both storages: the same work).
FIRST_SEED = 1001
BUCKET = "hbm-bench"
#: The phases of a fit's ``timings`` that do not touch storage.
PHASES = ("build_s", "compile_s", "sampling_s", "summarize_s")
PREFIX = "bench"
NOTE = (
    "S3 is moto's server (tests.support.s3), an in-process Python server on this machine: "
    "no network, so these figures are a lower bound on the protocol's overhead; a real "
    "MinIO or S3 over a network adds a round trip per request (several per fit, one or two "
    "per stored read)."
)


@dataclass
class Running:
    """A deployment on one storage, the storage as the service sees it, and a client."""

    kind: str
    deployment: Deployment
    storage: Storage
    client: httpx.Client
    data_dir: Path


@contextmanager
def running_on(kind: str, redis_url: str) -> Iterator[Running]:
    """API and both workers on ``kind`` storage, a flushed Redis database, a temporary
    data folder (for ``s3``, a fresh moto server with a bucket)."""
    Redis.from_url(redis_url).flushdb()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hbm-storage-")))
        env: dict[str, str] = {}
        if kind == "s3":
            env = stack.enter_context(s3_server(BUCKET)).settings(PREFIX)
        data_dir = folder / "data"
        fields: dict[str, Any] = {
            name.removeprefix("HBM_").lower(): value for name, value in env.items()
        }
        storage = storage_for(Settings(redis_url=redis_url, data_dir=data_dir, **fields))
        deployment = deploy(folder, redis_url, **env)
        stack.callback(deployment.stop_all)
        deployment.wait_until("/v1/readyz", 180)
        client = stack.enter_context(httpx.Client(base_url=deployment.base_url, timeout=600))
        yield Running(kind, deployment, storage, client, data_dir)


def wait_for_end(client: httpx.Client, location: str) -> dict[str, Any]:
    """Follow the fit's events stream until its ``end`` event; the fit it carries."""
    event, data = "message", ""
    with client.stream("GET", f"{location}/events") as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data += line.removeprefix("data:").strip()
            elif not line:
                if event == "end":
                    fit: dict[str, Any] = json.loads(data)
                    return fit
                event, data = "message", ""
    raise RuntimeError(f"the events stream of {location} closed without an end event")


def timed_fit(client: httpx.Client, seed: int) -> dict[str, Any]:
    """One seed-study fit, timed from the POST to ``succeeded`` and to its summary."""
    started = time.perf_counter()
    response = client.post("/v1/fits", json=fit_body(CASES["seed"], seed))
    response.raise_for_status()
    accepted_s = time.perf_counter() - started
    location = response.headers["location"]
    fit = wait_for_end(client, location)
    succeeded_s = time.perf_counter() - started
    if fit["status"] != "succeeded":
        raise RuntimeError(f"the fit {fit['status']}: {fit.get('error')}")
    client.get(f"{location}/summary").raise_for_status()
    summary_s = time.perf_counter() - started
    in_worker_s = (
        datetime.fromisoformat(fit["finished_at"]) - datetime.fromisoformat(fit["started_at"])
    ).total_seconds()
    timings = fit["timings"]
    return {
        "fit_id": fit["id"],
        "seed": seed,
        "post_s": accepted_s,
        "succeeded_s": succeeded_s,
        "summary_served_s": summary_s,
        "worker_s": in_worker_s,
        "outside_total_s": in_worker_s - timings["total_s"],
        "outside_phases_s": in_worker_s - sum(timings[phase] or 0.0 for phase in PHASES),
        "timings": timings,
    }


def stored_files(running: Running, fit_id: str) -> dict[str, int]:
    """Each stored file of the fit and its size, listed through the storage; for S3, also
    checks that nothing of the fit's was written to the local data folder."""
    folder = f"fits/{fit_id}"
    files = {
        name: running.storage.size(f"{folder}/{name}") for name in running.storage.names(folder)
    }
    if "posterior.nc" not in files:
        raise RuntimeError(f"{running.kind}: no posterior stored for {fit_id}: {sorted(files)}")
    if running.kind == "s3" and (running.data_dir / "fits" / fit_id).exists():
        raise RuntimeError(f"s3: the fit {fit_id} has files in the local data folder")
    return files


def timed(call: Callable[[], httpx.Response]) -> float:
    """Seconds of one request (which must succeed)."""
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def measure(running: Running, fits: int, calls: int) -> dict[str, Any]:
    """Fits, predictions and stored reads on one running deployment (see the docstring)."""
    client = running.client
    body = prediction_body()

    def predict(fit_id: str) -> Callable[[], httpx.Response]:
        return lambda: client.post(f"/v1/fits/{fit_id}/predictions", json=body)

    load_before = os.getloadavg()
    warmup = timed_fit(client, WARMUP_SEED)
    first_call_s = timed(predict(warmup["fit_id"]))
    timed_fits = [timed_fit(client, FIRST_SEED + i) for i in range(fits)]
    files = stored_files(running, timed_fits[-1]["fit_id"])
    cold_s = [timed(predict(fit["fit_id"])) for fit in timed_fits]
    last = timed_fits[-1]["fit_id"]
    answer = predict(last)().json()
    if len(answer["rows"]) != len(body["data"]["school"]):
        raise RuntimeError(f"{len(answer['rows'])} rows predicted")
    warm_s = [timed(predict(last)) for _ in range(calls)]
    summary = f"/v1/fits/{last}/summary"
    timed(lambda: client.get(summary))
    summary_s = [timed(lambda: client.get(summary)) for _ in range(calls)]
    status_s = [timed(lambda: client.get(f"/v1/fits/{last}")) for _ in range(calls)]
    return {
        "storage": running.storage.location if running.kind == "s3" else "local folder",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "warmup_fit": warmup,
        "worker_first_prediction_ms": 1000 * first_call_s,
        "fits": timed_fits,
        "stored_files": files,
        "stored_bytes": sum(files.values()),
        "prediction_cold_ms": [1000 * s for s in cold_s],
        "prediction_warm_ms": [1000 * s for s in warm_s],
        "summary_get_ms": [1000 * s for s in summary_s],
        "status_get_ms": [1000 * s for s in status_s],
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median, p95 (nearest rank), min and max."""
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 0.95),
        "min": min(values),
        "max": max(values),
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The figures of one storage over every round's samples."""
    fits = [fit for run in runs for fit in run["fits"]]
    by_fit = {
        key: spread([fit[key] for fit in fits])
        for key in (
            "succeeded_s",
            "summary_served_s",
            "post_s",
            "worker_s",
            "outside_total_s",
            "outside_phases_s",
        )
    }
    by_phase = {phase: spread([fit["timings"][phase] or 0.0 for fit in fits]) for phase in PHASES}
    samples = {
        key: spread([value for run in runs for value in run[key]])
        for key in ("prediction_cold_ms", "prediction_warm_ms", "summary_get_ms", "status_get_ms")
    }
    total = spread([fit["timings"]["total_s"] for fit in fits])
    stored = spread([float(run["stored_bytes"]) for run in runs])
    return {**by_fit, **by_phase, "total_s": total, **samples, "stored_bytes": stored}


#: (label, figure, statistic, unit) of each row of the table.
ROWS = (
    ("fit: POST until succeeded (events), median", "succeeded_s", "median", "s"),
    ("fit: POST until succeeded, min", "succeeded_s", "min", "s"),
    ("fit: POST until succeeded, max", "succeeded_s", "max", "s"),
    ("fit: POST until the summary is served, median", "summary_served_s", "median", "s"),
    ("fit: POST answered (request stored), median", "post_s", "median", "ms"),
    ("fit: worker finished_at - started_at, median", "worker_s", "median", "s"),
    ("fit: worker timings.total_s, median", "total_s", "median", "s"),
    ("fit: worker outside total_s (storing results), median", "outside_total_s", "median", "s"),
    ("fit: worker outside its phases (storage, Redis), median", "outside_phases_s", "median", "s"),
    ("fit: sampling_s (control: no storage), median", "sampling_s", "median", "s"),
    ("fit: summarize_s (control: no storage), median", "summarize_s", "median", "s"),
    ("stored bytes of one fit", "stored_bytes", "median", "B"),
    ("prediction 1,000 rows, cold (first call), median", "prediction_cold_ms", "median", "ms"),
    ("prediction 1,000 rows, cold, max", "prediction_cold_ms", "max", "ms"),
    ("prediction 1,000 rows, warm, p50", "prediction_warm_ms", "median", "ms"),
    ("prediction 1,000 rows, warm, p95", "prediction_warm_ms", "p95", "ms"),
    ("prediction 1,000 rows, warm, max", "prediction_warm_ms", "max", "ms"),
    ("GET /summary (stored file), p50", "summary_get_ms", "median", "ms"),
    ("GET /summary, p95", "summary_get_ms", "p95", "ms"),
    ("GET /v1/fits/{id} (Redis only, control), p50", "status_get_ms", "median", "ms"),
    ("GET /v1/fits/{id}, p95", "status_get_ms", "p95", "ms"),
)  # fmt: skip


def table(figures: dict[str, dict[str, dict[str, float]]]) -> tuple[list[dict[str, Any]], str]:
    """The rows (local, S3, S3/local) as data and as a Markdown table."""
    rows, lines = [], ["| measurement | local | S3 (moto) | S3/local |", "|---|---:|---:|---:|"]
    for label, figure, statistic, unit in ROWS:
        local, s3 = (figures[kind][figure][statistic] for kind in STORAGES)
        scale = 1000 if unit == "ms" and figure.endswith("_s") else 1
        local, s3 = local * scale, s3 * scale
        ratio = s3 / local if local else float("nan")
        rows.append({"measurement": label, "unit": unit, "local": local, "s3": s3, "ratio": ratio})
        digits = 0 if unit == "B" else 1 if unit == "ms" else 2
        lines.append(
            f"| {label.replace('|', chr(92) + '|')} | {local:,.{digits}f} {unit} "
            f"| {s3:,.{digits}f} {unit} | {ratio:.2f}x |"
        )
    return rows, "\n".join(lines)


def order(rounds: int) -> list[str]:
    """local, s3, s3, local, local, s3, ... (ABBA: a linear drift weighs on both alike)."""
    return [kind for i in range(rounds) for kind in (STORAGES if i % 2 == 0 else STORAGES[::-1])]


def main(argv: list[str] | None = None) -> None:
    """Measure both storages, save the JSON and print the table."""
    from bench.__main__ import machine

    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("--fits", type=int, default=FITS, help="timed fits per deployment")
    parser.add_argument("--calls", type=int, default=CALLS, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="deployments per storage")
    parser.add_argument("--redis-url", default=REDIS_URL, help="its database is flushed")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in STORAGES}
    for i, kind in enumerate(order(args.rounds)):
        print(f"[bench.storage] {i + 1}: {kind} ...", file=sys.stderr, flush=True)
        clock = time.perf_counter()
        with running_on(kind, args.redis_url) as running:
            runs[kind].append(measure(running, args.fits, args.calls))
        print(f"[bench.storage] {kind}: {time.perf_counter() - clock:.0f} s", file=sys.stderr)
    figures = {kind: pooled(runs[kind]) for kind in STORAGES}
    rows, markdown = table(figures)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "settings": {
            "case": "seed",
            "formula": CASES["seed"].formula,
            "chains": CHAINS,
            "draws": DRAWS,
            "tune": TUNE,
            "fits_per_deployment": args.fits,
            "calls": args.calls,
            "rounds": args.rounds,
            "order": order(args.rounds),
            "prediction_rows": len(prediction_body()["data"]["school"]),
        },
        "machine": machine(),
        "note": NOTE,
        "table": rows,
        "figures": figures,
        "runs": runs,
    }
    path = save("storage", result)
    print(markdown)
    print(f"\n{NOTE}\nresults: {path}")


if __name__ == "__main__":
    main()
