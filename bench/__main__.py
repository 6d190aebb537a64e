"""Run the benchmarks: ``python -m bench`` (every case on every system, in one run).

Writes ``bench/results/<UTC timestamp>.json`` and ``bench/results/latest.json`` (rewritten
after each case, so a long run keeps what it has measured) and prints one Markdown table per
case. ``--cases`` picks cases and ``--only`` systems or service measurements (comma
separated); ``--rstanarm-timeout`` bounds each rstanarm fit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx

from bench.cases import CASES, CHAINS, DATA_SEED, DRAWS, SEED, TUNE, Case
from bench.latency import run_latency
from bench.peers import PEERS, run_peer
from bench.predictions import measure_predictions
from bench.report import add_derived, markdown
from bench.rstanarm_run import run_rstanarm
from bench.seed import ROOT
from bench.service_run import After, run_service

RESULTS = Path(__file__).resolve().parent / "results"
SERVICE = ("service-http-cold", "service-http-warm")
SYSTEMS = (*SERVICE, *PEERS, "rstanarm")
PREDICTIONS = "predictions-1000"
LATENCY = "api-latency-50-clients"
LIBRARIES = ("bambi", "pymc", "pytensor", "nutpie", "arviz", "numpy", "celery", "fastapi")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import psutil

    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "service", "worker")),
    }


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _attempt(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one system; an error becomes a result with a note, never a failed benchmark."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        result = run()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return {"status": "error", "note": f"{type(exc).__name__}: {exc}"}
    result.setdefault("status", "ok")
    print(f"[bench] {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def _predictions(client: httpx.Client, fit_id: str) -> dict[str, Any]:
    return _attempt(PREDICTIONS, lambda: measure_predictions(client, fit_id))


def run_case(
    case: Case, selected: set[str], rstanarm_timeout_s: float, peer_timeout_s: float = 900
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Every selected system on ``case``, service first (its cold fit meets the coldest
    caches); with the seed study, also the predictions measurement. (systems, predictions)"""
    systems: dict[str, dict[str, Any]] = {}
    predictions = None
    predicting = case.name == "seed" and PREDICTIONS in selected
    if selected & set(SERVICE) or predicting:
        after: After | None = _predictions if predicting else None
        service = _attempt(f"{case.name} service-http", lambda: run_service(case, after))
        systems |= {name: service.get(name, service) for name in SERVICE if name in selected}
        predictions = service.get("after", service) if predicting else None
    for name in PEERS:
        if name in selected:
            systems[name] = _attempt(
                f"{case.name} {name}", partial(run_peer, name, case, peer_timeout_s)
            )
    if "rstanarm" in selected:
        systems["rstanarm"] = _attempt(
            f"{case.name} rstanarm", lambda: run_rstanarm(case, rstanarm_timeout_s)
        )
    for result in systems.values():
        result.setdefault("status", "ok")
    add_derived(systems)
    return systems, predictions


def write(report: dict[str, Any], stamp: str) -> Path:
    """Write the report as ``<stamp>.json`` and ``latest.json``; the first path."""
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    for name in (f"{stamp}.json", "latest.json"):
        temporary = RESULTS / f"{name}.tmp"
        temporary.write_text(text)
        temporary.replace(RESULTS / name)
    return RESULTS / f"{stamp}.json"


def main(argv: list[str] | None = None) -> None:
    """Measure the selected cases and systems, write the JSON and print the tables."""
    every = [*SYSTEMS, PREDICTIONS, LATENCY]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--cases", help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(every)}")
    parser.add_argument(
        "--rstanarm-timeout",
        type=float,
        default=900,
        metavar="SECONDS",
        help="kill an rstanarm fit past this and report it skipped (default 900)",
    )
    parser.add_argument(
        "--peer-timeout",
        type=float,
        default=900,
        metavar="SECONDS",
        help="kill an in-process peer (Bambi + nutpie, Bambi + PyMC) past this (default 900)",
    )
    args = parser.parse_args(argv)
    cases = args.cases.split(",") if args.cases else list(CASES)
    selected = set(args.only.split(",")) if args.only else set(every)
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {sorted(unknown)}")
    if unknown := selected - set(every):
        parser.error(f"unknown systems: {sorted(unknown)}")
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "settings": {
            "chains": CHAINS,
            "draws": DRAWS,
            "tune": TUNE,
            "seed": SEED,
            "data_seed": DATA_SEED,
            "rstanarm_timeout_s": args.rstanarm_timeout,
            "peer_timeout_s": args.peer_timeout,
        },
        "machine": machine(),
        "cases": {},
        "service": {},
    }
    for name in cases:
        case = CASES[name]
        case_systems, predictions = run_case(
            case, selected, args.rstanarm_timeout, args.peer_timeout
        )
        if selected & set(SYSTEMS):
            report["cases"][name] = {"case": case.describe(), "systems": case_systems}
        if predictions is not None:
            report["service"][PREDICTIONS] = predictions
        write(report, stamp)
    if PREDICTIONS in selected and PREDICTIONS not in report["service"]:
        _, predictions = run_case(CASES["seed"], {PREDICTIONS}, args.rstanarm_timeout)
        report["service"][PREDICTIONS] = predictions
    if LATENCY in selected:
        report["service"][LATENCY] = _attempt(LATENCY, run_latency)
    path = write(report, stamp)
    print(markdown(report))
    print(f"\nresults: {path.relative_to(ROOT)} (and bench/results/latest.json)")


if __name__ == "__main__":
    main()
