"""In-process peers, each run in a fresh Python process: ``python -m bench.peers PEER CASE``.

The child fits the case, then prints one JSON line: its timings, the statistics of the
case's main parameters, the digest of the data it fitted and its own peak RSS
(``ru_maxrss``). A fresh process per peer keeps compile costs and peak memory honest; the
on-disk PyTensor/Numba caches under ``~/.pytensor`` are shared, as on any machine after its
first fit. Timing starts at ``bmb.Model(...)``, once the data are in a DataFrame.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.cases import CASES, CHAINS, DRAWS, SEED, TUNE, Case
from bench.seed import ROOT
from bench.stats import as_dataset, posterior_stats

#: Where a peer's JSON line starts, so stray library output on stdout is skipped.
MARKER = "BENCH-RESULT "


def _bambi_fit(case: Case, **fit_options: Any) -> tuple[dict[str, Any], Any]:
    """Bambi's own ``Model.fit``, timed from model creation: (timings, idata)."""
    import bambi as bmb

    frame = case.frame()
    started = time.perf_counter()
    model = bmb.Model(case.formula, frame, family=case.family)
    created = time.perf_counter()
    idata = model.fit(
        draws=DRAWS, tune=TUNE, chains=CHAINS, random_seed=SEED, progressbar=False, **fit_options
    )
    finished = time.perf_counter()
    timings = {
        "wall_s": finished - started,
        "build_s": created - started,
        "fit_s": finished - created,
        **posterior_stats(as_dataset(idata["posterior"]), case.parameters),
    }
    return timings, idata


def bambi_nutpie(case: Case) -> dict[str, Any]:
    """Bambi's own ``fit(inference_method="nutpie")``, timed from model creation."""
    timings, _ = _bambi_fit(case, inference_method="nutpie")
    return timings


def nutpie_split(case: Case) -> dict[str, Any]:
    """What the service's worker does, without Celery or HTTP: build, compile, sample."""
    import bambi as bmb
    import nutpie

    frame = case.frame()
    started = time.perf_counter()
    model = bmb.Model(case.formula, frame, family=case.family)
    model.build()
    built = time.perf_counter()
    compiled = nutpie.compile_pymc_model(model.backend.model, var_names=_stored(model))
    compiled_at = time.perf_counter()
    trace = nutpie.sample(
        compiled,
        draws=DRAWS,
        tune=TUNE,
        chains=CHAINS,
        cores=CHAINS,
        seed=SEED,
        save_warmup=False,
        progress_bar=False,
    )
    finished = time.perf_counter()
    return {
        "wall_s": finished - started,
        "build_s": built - started,
        "compile_s": compiled_at - built,
        "sampling_s": finished - compiled_at,
        **posterior_stats(as_dataset(trace["posterior"]), case.parameters),
    }


def bambi_pymc(case: Case) -> dict[str, Any]:
    """Bambi with PyMC's default NUTS sampler, chains in parallel processes."""
    cores = min(CHAINS, os.cpu_count() or 1)
    timings, idata = _bambi_fit(case, inference_method="pymc", cores=cores)
    stats = as_dataset(idata["sample_stats"])
    sampling_s = float(stats.attrs.get("sampling_time", float("nan")))
    return {**timings, "sampling_s": sampling_s, "cores": cores}


def _stored(model: Any) -> list[str]:
    """Free parameters and deterministics without a per-row dimension (as the service)."""
    pm_model = model.backend.model
    names = [rv.name for rv in pm_model.free_RVs]
    for det in pm_model.deterministics:
        if "__obs__" not in pm_model.named_vars_to_dims.get(det.name, ()):
            names.append(det.name)
    return names


PEERS: dict[str, Callable[[Case], dict[str, Any]]] = {
    "bambi-nutpie-inprocess": bambi_nutpie,
    "nutpie-direct-inprocess": nutpie_split,
    "bambi-pymc": bambi_pymc,
}


def run_peer(name: str, case: Case, timeout_s: float = 1800) -> dict[str, Any]:
    """Run peer ``name`` on ``case`` in a fresh Python process; its result plus the process's
    wall time. Raises when the child fails or fitted other data than this process has."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "bench.peers", name, case.name],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            note = f"did not finish within {timeout_s:.0f} s (killed)"
            return {"status": "skipped", "reason": "timeout", "note": note}
        process_s = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"peer {name} exited {completed.returncode}: {stderr[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(MARKER) :])
    if result.pop("data_sha256") != case.digest():
        raise RuntimeError(f"peer {name} fitted other data than the parent generated")
    result["process_s"] = process_s
    return result


def main(argv: list[str]) -> None:
    """Child entry point: fit the case with the named peer and print its result line."""
    if len(argv) != 2 or argv[0] not in PEERS or argv[1] not in CASES:
        raise SystemExit(
            f"usage: python -m bench.peers {{{'|'.join(PEERS)}}} {{{'|'.join(CASES)}}}"
        )
    case = CASES[argv[1]]
    imports_started = time.perf_counter()
    import bambi  # noqa: F401  (import time is reported apart from the fit)
    import nutpie  # noqa: F401
    import pymc  # noqa: F401

    import_s = time.perf_counter() - imports_started
    result = PEERS[argv[0]](case)
    result["import_s"] = import_s
    result["data_sha256"] = case.digest()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["peak_rss_children_mb"] = children or None
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
