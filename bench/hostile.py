"""Hostile clients against the real service: issue 11's items 8-13 replayed at once.

``python -m bench.hostile`` starts the API and workers (as ``make run`` does, with API keys
configured), fits the seed study once with 40,000 draws, then runs these clients together:

- ``csv``: a 48 MiB CSV upload (5 million rows, far over the row limit);
- ``no-key``: 40 MiB JSON bodies sent without an API key;
- ``empty-objects``: a 60 MiB body of empty records, with the key;
- ``predictions``: 55 concurrent predictions of 600 rows at 40,000 draws, then one of
  2,000 rows and one of 100,000 rows;
- ``categorical``: a dry run and a fit of ``y ~ s`` with 6,000 distinct levels of ``s``;
- ``slow``: 1,000 connections that send part of their headers, and 100 that send part of
  a body, then nothing.

Meanwhile a prober (a process of its own) asks ``GET /v1/healthz`` every 20 ms and a
sampler reads the RSS of the
API process and of both workers (main and pool processes) every 100 ms. It reports every
request's answer (status codes, or the transport error), health latency (max, p99, how
many over 100 ms), and the peak RSS of each process; JSON goes to
``bench/results/hostile-<UTC time>.json``. Targets: health within 100 ms throughout, API
under 400 MiB, workers under 1.5 GiB, every request answered.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

import httpx
import psutil

from bench.load import percentile
from bench.report import save
from bench.seed import FORMULA, load_records
from bench.service_run import Deployment, deployment, wait_until_ready

KEY = "bench-hostile-key"
HEADERS = {"X-API-Key": KEY}


class Periodic:
    """Calls ``step()`` every ``every_s`` seconds from a daemon thread inside a ``with``."""

    every_s = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def step(self) -> None:
        """One sample."""
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.step()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Sampler(Periodic):
    """Peak RSS of the deployment's processes (with their children), every 100 ms."""

    def __init__(self, running: Deployment) -> None:
        super().__init__()
        self.running = running
        self.peaks: Counter[str] = Counter()

    def step(self) -> None:
        for name, process in self.running.processes.items():
            try:
                root = psutil.Process(process.pid)
                members = [root, *root.children(recursive=True)]
                mb = max(m.memory_info().rss for m in members) / 2**20
            except psutil.Error:
                continue
            self.peaks[name] = max(self.peaks[name], round(mb))


def probe_health(base_url: str, stop: Any, latencies: Any, failures: Any) -> None:
    """``GET /v1/healthz`` every 20 ms until ``stop`` is set (runs in its own process)."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not stop.wait(0.02):
            asked = time.perf_counter()
            try:
                ok = client.get("/v1/healthz").status_code == 200
            except httpx.TransportError as exc:
                failures.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - asked)
            if not ok:
                failures.append("status")


class Prober:
    """Health latencies (seconds), asked from a process of its own, so that the clients'
    own work (building 60 MiB bodies holds this process's GIL) never delays a probe."""

    def __init__(self, base_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._manager = context.Manager()
        self._stop = self._manager.Event()
        self._latencies = self._manager.list()
        self._failures = self._manager.list()
        self._process = context.Process(
            target=probe_health, args=(base_url, self._stop, self._latencies, self._failures)
        )
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def __enter__(self) -> Self:
        self._process.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._process.join()
        self.latencies, self.failures = list(self._latencies), list(self._failures)
        self._manager.shutdown()


def answered(call: Callable[[], httpx.Response]) -> str:
    """The status code of a call, or the name of the transport error it ended with."""
    try:
        return str(call().status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


@dataclass(frozen=True)
class Bodies:
    """The large bodies, built before the clock runs (building them holds the client's
    CPU, which on a 2-core machine would be measured as the service's latency)."""

    csv: bytes  # 48 MiB, 5 million rows
    records: bytes  # 40 MiB of records
    empty: bytes  # 60 MiB of empty records

    @classmethod
    def build(cls) -> Bodies:
        rows = b"".join(b"%d,%d.5\n" % (i % 977, i % 13) for i in range(5_000_000))
        records = b",".join([b'{"x": 1.5, "y": 2}'] * 2_200_000)
        return cls(
            csv=b"school,score\n" + rows,
            records=b'{"formula": "y ~ x", "data": [' + records + b"]}",
            empty=b'{"formula": "y ~ x", "data": [' + b",".join([b"{}"] * 20_000_000) + b"]}",
        )


def csv_upload(client: httpx.Client, bodies: Bodies) -> list[str]:
    return [
        answered(
            lambda: client.post(
                "/v1/fits/upload",
                files={"file": ("big.csv", bodies.csv, "text/csv")},
                data={"request": json.dumps({"formula": FORMULA})},
                headers=HEADERS,
            )
        )
    ]


def no_key_bodies(client: httpx.Client, bodies: Bodies) -> list[str]:
    headers = {"content-type": "application/json"}
    return [
        answered(lambda: client.post("/v1/fits", content=bodies.records, headers=headers))
        for _ in "abc"
    ]


def empty_objects(client: httpx.Client, bodies: Bodies) -> list[str]:
    headers = {"content-type": "application/json", **HEADERS}
    return [answered(lambda: client.post("/v1/fits", content=bodies.empty, headers=headers))]


def predictions(client: httpx.Client, location: str) -> list[str]:
    schools = [1 + i % 25 for i in range(600)]

    def one(_: int) -> str:
        return answered(
            lambda: client.post(
                location + "/predictions", json={"data": {"school": schools}}, headers=HEADERS
            )
        )

    with ThreadPoolExecutor(max_workers=55) as pool:
        codes = list(pool.map(one, range(55)))
    for rows in (2_000, 100_000):
        data = {"data": {"school": [1 + i % 30 for i in range(rows)]}}
        codes.append(
            answered(lambda d=data: client.post(location + "/predictions", json=d, headers=HEADERS))
        )
    return codes


def categorical(client: httpx.Client) -> list[str]:
    n = 12_000
    data = {"y": [float(i % 7) for i in range(n)], "s": [f"level-{i % 6000}" for i in range(n)]}
    body = {"data": data, "formula": "y ~ s"}
    return [
        answered(lambda: client.post("/v1/models/validate", json=body, headers=HEADERS)),
        answered(lambda: client.post("/v1/fits", json=body, headers=HEADERS)),
    ]


def slow_clients(base_url: str) -> list[str]:
    port = int(base_url.rsplit(":", 1)[1])
    partial_head = b"POST /v1/fits HTTP/1.1\r\nHost: x\r\nContent-Len"
    partial_body = (
        b"POST /v1/fits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-API-Key: {KEY}\r\nContent-Length: 5000\r\n\r\n".encode()
        + b'{"formula": '
    )
    sockets = []
    for i in range(1_100):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(partial_head if i < 1_000 else partial_body)
        sockets.append(sock)
    outcomes = []
    for sock in sockets:
        sock.settimeout(90)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
            outcomes.append(received.split(b" ", 2)[1].decode() if received else "closed")
        except TimeoutError:
            outcomes.append("still-open")
        finally:
            sock.close()
    return outcomes


def seed_fit(client: httpx.Client) -> str:
    body = {
        "data": load_records(),
        "formula": FORMULA,
        "sampler": {"draws": 10_000, "tune": 500, "chains": 4, "seed": 1},
    }
    response = client.post("/v1/fits", json=body, headers=HEADERS)
    response.raise_for_status()
    location: str = response.headers["location"]
    while client.get(location, headers=HEADERS).json()["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        time.sleep(0.2)
    return location


def run(only: set[str] | None = None) -> dict[str, Any]:
    """Start the service, replay the hostile clients (``only`` these, if given), report."""
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    with deployment({"HBM_API_KEY_HASHES": json.dumps([digest])}) as running:
        wait_until_ready(running)
        with httpx.Client(base_url=running.base_url, timeout=300) as client:
            location = seed_fit(client)
            client.post(location + "/predictions", json={"data": {"school": [1]}}, headers=HEADERS)
            bodies = Bodies.build()
            sampler = Sampler(running)
            prober = Prober(running.base_url)
            started = time.perf_counter()
            with sampler, prober:
                jobs: dict[str, Callable[[], list[str]]] = {
                    "csv": lambda: csv_upload(client, bodies),
                    "no-key": lambda: no_key_bodies(client, bodies),
                    "empty-objects": lambda: empty_objects(client, bodies),
                    "predictions": lambda: predictions(client, location),
                    "categorical": lambda: categorical(client),
                    "slow": lambda: slow_clients(running.base_url),
                }
                jobs = {name: job for name, job in jobs.items() if not only or name in only}
                with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
                    futures = {name: pool.submit(job) for name, job in jobs.items()}
                    outcomes = {name: dict(Counter(f.result())) for name, f in futures.items()}
            seconds = time.perf_counter() - started
    latencies = prober.latencies
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "answers": outcomes,
        "health": {
            "probes": len(latencies),
            "max_ms": round(1000 * max(latencies), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "over_100_ms": sum(v > 0.1 for v in latencies),
            "failures": prober.failures,
        },
        "peak_rss_mb": dict(sampler.peaks),
    }


def main() -> None:
    """Parse the options, run and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="clients to run, comma separated (default: all)")
    options = parser.parse_args()
    result = run(set(options.only.split(",")) if options.only else None)
    save("hostile", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
