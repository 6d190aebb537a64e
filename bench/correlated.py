"""Correlated group effects against the independent model on the same data, same run:
``python -m bench.correlated [repeats]``.

The case is ``slopes-300x30`` (300 groups x 30 rows, ``y ~ x + (1 + x | g)``, true
correlation 0.3). Each model is built and sampled as a fit worker does (the service's
parameterization choice, its compiled-model cache warm after a first run), 4 chains x
1,000 draws after 1,000 tuning steps; reported: sampling seconds (warm), the smallest bulk
ESS over every parameter, and the correlation's posterior mean.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def measure(correlations: str, repeats: int) -> dict[str, Any]:
    """Sample the case ``repeats`` times warm (after one compiling run); the best time."""
    import arviz_stats  # noqa: F401
    import numpy as np

    from bench.cases import CASES
    from service.core.schemas import FitSpec, ResolvedSampler
    from worker.modeling import parameterization
    from worker.modeling.building import build_model
    from worker.modeling.compiled import CompiledModels
    from worker.modeling.sampling import sample

    case = CASES["slopes-300x30"]
    data = case.make_data()
    columns = {"g": [f"g{i}" for i in data["g"]], "x": data["x"].tolist(), "y": data["y"].tolist()}
    cache = CompiledModels(size=2)
    runs = []
    for seed in range(repeats + 1):
        sampler = ResolvedSampler(
            draws=1000, tune=1000, chains=4, seed=seed, target_accept=0.8, method="nutpie"
        )
        spec = FitSpec(
            formula=case.formula, family="gaussian", link="identity", columns=columns,
            sampler=sampler, group_correlations=correlations,
        )  # fmt: skip
        model = build_model(spec)
        choice = parameterization.apply(model, "auto")
        started = time.perf_counter()
        result = sample(
            model, sampler, lambda _: None, compiled_models=cache,
            centre_on=choice.centre_on_intercept,
        )  # fmt: skip
        wall = time.perf_counter() - started
        ess = result.posterior.azstats.ess(method="bulk")
        corr = [v for v in result.posterior.data_vars if str(v).endswith("_corr")]
        runs.append(
            {
                "sampling_s": result.sampling_s,
                "wall_s": wall,
                "min_ess_bulk": float(min(np.min(ess[v].values) for v in ess.data_vars)),
                "corr_mean": float(result.posterior[corr[0]].mean()) if corr else None,
                "parameterization": choice.parameterization,
                "likelihood": result.likelihood,
            }
        )
    warm = runs[1:]
    best = min(warm, key=lambda r: r["sampling_s"])
    return {"group_correlations": correlations, "best": best, "runs": runs}


def main(repeats: int) -> None:
    """Both models, saved and printed with the ratio of their warm sampling times."""
    results = [measure("independent", repeats), measure("estimate", repeats)]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"correlated-{stamp}.json").write_text(json.dumps(results, indent=1))
    for r in results:
        b = r["best"]
        print(
            f"{r['group_correlations']:>12}: sampling {b['sampling_s']:.2f} s, min bulk ESS "
            f"{b['min_ess_bulk']:.0f}, corr {b['corr_mean']}, {b['parameterization']}, "
            f"{b['likelihood']}"
        )
    ratio = results[1]["best"]["sampling_s"] / results[0]["best"]["sampling_s"]
    print(f"correlated / independent sampling time: {ratio:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
