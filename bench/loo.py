"""PSIS-LOO of a large fit: the worker's chunked computation against ArviZ's ``loo`` on the
whole log likelihood array (Bambi's ``compute_log_likelihood``), measured in the same run.

``python -m bench.loo [rows ...]`` (default 20,000 and 100,000 rows). The model is
``y ~ x + (1 | g)`` with 1,000 groups and 4 x 1,000 draws (made-up draws around the truth:
LOO's cost depends on their number, not on how they were sampled). Each measurement runs in
a fresh process: wall time of the LOO alone, the process's peak RSS, and that peak over
its peak once the model was built. The peer runs on the smallest size only (its log
likelihood array is rows x 4,000 doubles, 3.2 GB at 100,000 rows, before ArviZ's copies).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
GROUPS = 1000
CHAINS, DRAWS = 4, 1000


def _setup(rows: int) -> tuple[object, object, object]:
    import numpy as np
    import xarray as xr

    from service.core.schemas import FitSpec, ResolvedSampler
    from worker.modeling.building import build_model, frame

    rng = np.random.default_rng(0)
    g = rng.integers(0, GROUPS, rows)
    x = rng.normal(size=rows)
    y = 1 + 0.5 * x + rng.normal(0, 1, GROUPS)[g] + rng.normal(size=rows)
    columns = {"y": y.tolist(), "x": x.tolist(), "g": [f"g{i}" for i in g]}
    sampler = ResolvedSampler(
        draws=DRAWS, tune=100, chains=CHAINS, seed=1, target_accept=0.8, method="nutpie"
    )
    spec = FitSpec(
        formula="y ~ x + (1 | g)", family="gaussian", link="identity", columns=columns,
        sampler=sampler,
    )  # fmt: skip
    model = build_model(spec)
    shape = (CHAINS, DRAWS)
    posterior = xr.Dataset(
        {
            "Intercept": (("chain", "draw"), 1 + 0.02 * rng.normal(size=shape)),
            "x": (("chain", "draw"), 0.5 + 0.01 * rng.normal(size=shape)),
            "sigma": (("chain", "draw"), 1 + 0.01 * rng.normal(size=shape)),
            "1|g_sigma": (("chain", "draw"), 1 + 0.05 * rng.normal(size=shape)),
            "1|g": (("chain", "draw", "g__factor_dim"), rng.normal(size=(*shape, GROUPS))),
        },
        coords={
            "chain": np.arange(CHAINS),
            "draw": np.arange(DRAWS),
            "g__factor_dim": sorted(set(columns["g"])),
        },
    )
    return model, posterior, frame(spec.columns, spec)


def _measure(kind: str, rows: int) -> dict[str, float]:
    """In this process: build, then time one LOO (``service`` or ``arviz``)."""
    model, posterior, data = _setup(rows)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if kind == "service":
        from worker.modeling.loo import loo_result, pointwise_loo

        elpd = loo_result("bench", pointwise_loo(model, posterior, data, "gaussian"), []).elpd_loo
    else:
        import arviz_stats
        import xarray as xr

        tree = xr.DataTree.from_dict({"posterior": posterior})
        model.compute_log_likelihood(tree)  # type: ignore[attr-defined]
        elpd = float(arviz_stats.loo(tree).elpd)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = max(0.0, peak - before)
    return {"seconds": seconds, "peak_mb": peak, "extra_peak_mb": extra, "elpd_loo": elpd}


def _run(kind: str, rows: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.loo", "--one", kind, str(rows)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(sizes: list[int]) -> None:
    """Measure every size with the service, the smallest with ArviZ too; save and print."""
    results = []
    for rows in sizes:
        results.append({"rows": rows, "kind": "service", **_run("service", rows)})
    smallest = min(sizes)
    try:
        results.append({"rows": smallest, "kind": "arviz", **_run("arviz", smallest)})
    except subprocess.CalledProcessError as exc:
        print(f"the ArviZ peer failed: {exc.stderr[-500:]}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"loo-{stamp}.json").write_text(json.dumps(results, indent=1))
    print(f"{'rows':>8} {'who':>8} {'seconds':>8} {'peak MB':>8} {'over build':>10} {'elpd':>10}")
    for r in results:
        print(
            f"{r['rows']:>8} {r['kind']:>8} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f} "
            f"{r['extra_peak_mb']:>10.0f} {r['elpd_loo']:>10.1f}"
        )
    peer = [r for r in results if r["kind"] == "arviz"]
    ours = [r for r in results if r["kind"] == "service" and r["rows"] == smallest]
    if peer and ours:
        print(
            f"at {smallest} rows: {peer[0]['seconds'] / ours[0]['seconds']:.1f}x faster, "
            f"{peer[0]['extra_peak_mb'] / max(ours[0]['extra_peak_mb'], 1):.1f}x less memory "
            "than ArviZ's loo on the whole array"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(_measure(sys.argv[2], int(sys.argv[3]))))
    else:
        main([int(a) for a in sys.argv[1:]] or [20_000, 100_000])
