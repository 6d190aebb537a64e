"""Chaos: a stream of fits and predictions while Redis, the API and the workers are stalled
and killed at random.

``python -m bench.chaos [--seconds 180] [--clients 6] [--seed 1]`` runs ``make run``'s
launcher (``python -m service.launcher``: embedded Redis with append-only persistence, a fit
worker, an interactive worker and the API, each restarted when it dies) in a temporary
folder. Clients submit small seeded fits, each with its own ``Idempotency-Key`` and retried
on 503, 507 and transport errors, and ask for predictions of fits that succeeded. A chaos
thread, every 4-12 s, does one of: stall Redis (SIGSTOP 2-10 s), kill Redis, kill the fit
worker's pool process, kill the whole fit worker, kill the interactive worker, kill the API
(each once per round, in a random order).
A prober asks ``GET /v1/healthz`` every 50 ms.

After ``--seconds`` the chaos stops and every accepted fit is waited for (up to 10 min).
Reported (``bench/results/chaos-<UTC time>.json``): fits accepted, succeeded, failed by
reason, lost (accepted, then unknown: must be 0), duplicated (one Idempotency-Key, two fit
ids: must be 0), stuck (not final at the end: must be 0); predictions answered by status;
health answers slower than 1 s while Redis was up (must be 0) and health probes that found
no API (it was being restarted).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.report import save
from bench.seed import FORMULA, ROOT, load_records
from bench.service_run import free_port

FINAL = ("succeeded", "failed", "cancelled")
RETRY = {503, 507}
ACTIONS = ("stall-redis", "kill-redis", "kill-pool", "kill-fits", "kill-interactive", "kill-api")


@dataclass
class Ledger:
    """What the clients saw, shared between threads."""

    accepted: dict[str, set[str]] = field(default_factory=dict)  # key -> fit ids
    refused: Counter[str] = field(default_factory=Counter)
    predictions: Counter[str] = field(default_factory=Counter)
    succeeded: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Outages:
    """When Redis or the API was down (monotonic intervals), and what chaos did."""

    redis: list[tuple[float, float]] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)

    def redis_down(self, moment: float, margin: float = 3.0) -> bool:
        return any(start - 0.5 <= moment <= end + margin for start, end in self.redis)


class Service:
    """The launcher and its children."""

    def __init__(self, folder: Path, port: int) -> None:
        env = dict(os.environ)
        for name in ("REDIS_URL", "HBM_REDIS_URL"):
            env.pop(name, None)
        env.update(
            PORT=str(port),
            HBM_DATA_DIR=str(folder / "data"),
            HBM_LOCK_TTL_S="6",
            HBM_RECONCILE_INTERVAL_S="2",
            LOG_LEVEL="warning",
            PYTHONPATH=str(ROOT),
        )
        self.log = (folder / "launcher.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.launcher"],
            cwd=folder,
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        self.base_url = f"http://127.0.0.1:{port}"

    def child(self, *words: str) -> psutil.Process | None:
        """The launcher's child whose command line holds all of ``words``."""
        for child in psutil.Process(self.process.pid).children():
            try:
                line = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if all(word in line for word in words):
                return child
        return None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()


def chaos(service: Service, outages: Outages, stop: threading.Event, rng: random.Random) -> None:
    """Stall and kill parts of the service until ``stop``: every action once per round,
    in a random order, at random intervals."""
    actions: list[str] = []
    while not stop.wait(rng.uniform(4, 12)):
        if not actions:
            actions = [*ACTIONS]
            rng.shuffle(actions)
        action = actions.pop()
        target = {
            "stall-redis": ("redis-server",),
            "kill-redis": ("redis-server",),
            "kill-pool": ("worker", "fits"),
            "kill-fits": ("worker", "fits"),
            "kill-interactive": ("worker", "interactive"),
            "kill-api": ("-m", "service"),
        }[action]
        process = service.child(*target)
        if process is None:
            continue
        outages.actions[action] += 1
        try:
            if action == "stall-redis":
                started = time.monotonic()
                process.suspend()
                stop.wait(rng.uniform(2, 10))
                process.resume()
                outages.redis.append((started, time.monotonic()))
            elif action == "kill-redis":
                started = time.monotonic()
                process.kill()
                outages.redis.append((started, started + 4))  # restarted after a backoff
            elif action == "kill-pool":
                for child in process.children():
                    child.kill()
            else:
                for child in process.children(recursive=True):
                    child.kill()
                process.kill()
        except psutil.Error:
            continue


def client_loop(
    base_url: str, ledger: Ledger, stop: threading.Event, rng: random.Random, records: Any
) -> None:
    """Submit fits (retried with their key until answered) and ask for predictions."""
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while not stop.is_set():
            if ledger.succeeded and rng.random() < 0.4:
                fit_id = rng.choice(ledger.succeeded)
                try:
                    answer = client.post(
                        f"/v1/fits/{fit_id}/predictions", json={"data": {"school": [1, 99]}}
                    )
                    ledger.predictions[str(answer.status_code)] += 1
                except httpx.HTTPError as exc:
                    ledger.predictions[type(exc).__name__] += 1
                continue
            key = uuid.uuid4().hex
            body = {
                "data": rng.sample(records, 150),
                "formula": FORMULA,
                "sampler": {"draws": 150, "tune": 150, "chains": 2, "seed": rng.randrange(10**6)},
            }
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    answer = client.post("/v1/fits", json=body, headers={"Idempotency-Key": key})
                except httpx.HTTPError:
                    time.sleep(1)
                    continue
                if answer.status_code == 202:
                    with ledger.lock:
                        ledger.accepted.setdefault(key, set()).add(answer.json()["id"])
                    break
                ledger.refused[str(answer.status_code)] += 1
                if answer.status_code not in RETRY and answer.status_code != 429:
                    break
                time.sleep(float(answer.headers.get("retry-after", "1")))
            time.sleep(rng.uniform(0.2, 1.0))


def prober(base_url: str, seen: list[tuple[float, float | None]], stop: threading.Event) -> None:
    """Health every 50 ms: (moment, latency), latency None when no API answered."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        while not stop.wait(0.05):
            asked = time.monotonic()
            try:
                client.get("/v1/healthz")
                seen.append((asked, time.monotonic() - asked))
            except httpx.HTTPError:
                seen.append((asked, None))


def follow(base_url: str, ledger: Ledger, stop: threading.Event) -> None:
    """Note which accepted fits succeeded (for predictions)."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        while not stop.wait(2):
            with ledger.lock:
                ids = {i for ids in ledger.accepted.values() for i in ids} - set(ledger.succeeded)
            for fit_id in list(ids)[:50]:
                try:
                    if client.get(f"/v1/fits/{fit_id}").json().get("status") == "succeeded":
                        ledger.succeeded.append(fit_id)
                except (httpx.HTTPError, ValueError):
                    break


def final_states(base_url: str, ids: set[str], wait_s: float) -> dict[str, str]:
    """Each fit's final status ('unknown' for a 404, 'stuck' if never final)."""
    states: dict[str, str] = {}
    deadline = time.monotonic() + wait_s
    with httpx.Client(base_url=base_url, timeout=10) as client:
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for fit_id in sorted(pending):
                try:
                    answer = client.get(f"/v1/fits/{fit_id}")
                except httpx.HTTPError:
                    break
                if answer.status_code == 404:
                    states[fit_id] = "unknown"
                elif answer.status_code == 200 and answer.json()["status"] in FINAL:
                    fit = answer.json()
                    reason = (fit.get("error") or {}).get("reason")
                    states[fit_id] = fit["status"] + (f":{reason}" if reason else "")
            pending -= set(states)
            time.sleep(2)
        states |= {fit_id: "stuck" for fit_id in pending}
    return states


def wait_until_ready(base_url: str, timeout_s: float = 300) -> None:
    """Until ``/v1/readyz`` answers 200 (Redis, storage and both workers up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/v1/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("the service did not get ready")


def run(seconds: float, clients: int, seed: int) -> dict[str, Any]:
    """The whole chaos run; its figures."""
    rng = random.Random(seed)
    records = load_records()
    ledger, outages, seen = Ledger(), Outages(), []
    with tempfile.TemporaryDirectory(prefix="hbm-chaos-") as name:
        folder = Path(name)
        service = Service(folder, free_port())
        try:
            wait_until_ready(service.base_url)
            stop, stop_chaos = threading.Event(), threading.Event()
            threads = [
                threading.Thread(target=prober, args=(service.base_url, seen, stop)),
                threading.Thread(target=follow, args=(service.base_url, ledger, stop)),
                threading.Thread(target=chaos, args=(service, outages, stop_chaos, rng)),
                *[
                    threading.Thread(
                        target=client_loop,
                        args=(
                            service.base_url,
                            ledger,
                            stop_chaos,
                            random.Random(seed + i),
                            records,
                        ),
                    )
                    for i in range(clients)
                ],
            ]
            for thread in threads:
                thread.start()
            time.sleep(seconds)
            stop_chaos.set()
            for thread in threads[2:]:
                thread.join()
            ids = {i for ids in ledger.accepted.values() for i in ids}
            states = final_states(service.base_url, ids, wait_s=600)
            stop.set()
            for thread in threads[:2]:
                thread.join()
        finally:
            service.stop()
    outcomes = Counter(states.values())
    slow = [m for m, latency in seen if latency is not None and latency > 1.0]
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
        "clients": clients,
        "chaos": dict(outages.actions),
        "fits": {
            "accepted": len(states),
            "succeeded": outcomes.pop("succeeded", 0),
            "failed": {
                k.split(":", 1)[1]: v for k, v in outcomes.items() if k.startswith("failed")
            },
            "cancelled": outcomes.get("cancelled", 0),
            "lost": outcomes.get("unknown", 0),
            "stuck": outcomes.get("stuck", 0),
            "duplicated": sum(len(ids) > 1 for ids in ledger.accepted.values()),
            "refusals_retried": dict(ledger.refused),
        },
        "predictions": dict(ledger.predictions),
        "health": {
            "probes": len(seen),
            "over_1s_while_redis_up": sum(not outages.redis_down(m) for m in slow),
            "over_1s_while_redis_down": sum(outages.redis_down(m) for m in slow),
            "no_api_answer": sum(latency is None for _, latency in seen),
        },
    }


def main() -> None:
    """Parse the options, run, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    result = run(options.seconds, options.clients, options.seed)
    save("chaos", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
