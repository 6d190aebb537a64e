"""Run the seed-study benchmark: ``python -m bench`` (every system, in one run).

Writes ``bench/results/<UTC timestamp>.json`` and ``bench/results/latest.json`` and prints
a Markdown table. ``--only`` picks systems by name (comma separated).
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

from bench.peers import PEERS, run_peer
from bench.report import add_derived, markdown
from bench.rstanarm_run import run_rstanarm
from bench.seed import CHAINS, DRAWS, FAMILY, FORMULA, ROOT, SEED, TUNE, load_records
from bench.service_run import run_service

RESULTS = Path(__file__).resolve().parent / "results"
SERVICE = ("service-http-cold", "service-http-warm")
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


def run_all(selected: set[str]) -> dict[str, dict[str, Any]]:
    """Every selected system, service first (its cold fit meets the coldest caches)."""
    systems: dict[str, dict[str, Any]] = {}
    if selected & set(SERVICE):
        records = load_records()
        service = _attempt("service-http", lambda: run_service(records))
        for name in SERVICE:
            if name in selected:
                systems[name] = service.get(name, service)
    for name in PEERS:
        if name in selected:
            systems[name] = _attempt(name, partial(run_peer, name))
    if "rstanarm" in selected:
        systems["rstanarm"] = _attempt("rstanarm", run_rstanarm)
    for result in systems.values():
        result.setdefault("status", "ok")
    return systems


def write(report: dict[str, Any], stamp: str) -> Path:
    """Write the report as ``<stamp>.json`` and ``latest.json``; the first path."""
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    for name in (f"{stamp}.json", "latest.json"):
        partial = RESULTS / f"{name}.tmp"
        partial.write_text(text)
        partial.replace(RESULTS / name)
    return RESULTS / f"{stamp}.json"


def main(argv: list[str] | None = None) -> None:
    """Measure the selected systems, write the JSON and print the table."""
    every = [*SERVICE, *PEERS, "rstanarm"]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(every)}")
    args = parser.parse_args(argv)
    selected = set(args.only.split(",")) if args.only else set(every)
    if unknown := selected - set(every):
        parser.error(f"unknown systems: {sorted(unknown)}")
    now = datetime.now(UTC)
    report: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "case": {
            "data": "data/seed_students.csv",
            "formula": FORMULA,
            "family": FAMILY,
            "chains": CHAINS,
            "draws": DRAWS,
            "tune": TUNE,
            "seed": SEED,
        },
        "machine": machine(),
        "systems": run_all(selected),
    }
    add_derived(report["systems"])
    path = write(report, now.strftime("%Y%m%dT%H%M%SZ"))
    print(markdown(report))
    print(f"\nresults: {path.relative_to(ROOT)} (and bench/results/latest.json)")


if __name__ == "__main__":
    main()
