"""Warm a fit worker before its pool forks.

The first fit of a process pays for initialising numba and LLVM (about 5 s here), for
h5py's first file and for ArviZ's first diagnostics; later fits of any structure pay far
less. A fit worker therefore runs a whole tiny fit once in its main process (build,
compile, sample, store the results in a temporary folder), before the pool forks, so every
pool process (including the ones that replace recycled or killed processes) starts warm.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def warm_up() -> float:
    """Fit a tiny varying-intercept model end to end, off the record; the seconds it took."""
    import bambi as bmb

    from service.core.artifacts import Artifacts
    from service.core.jobs import new_fit_id
    from service.core.schemas import ResolvedSampler
    from worker.modeling.sampling import sample
    from worker.modeling.storage import store_results

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"y": rng.normal(size=12), "x": rng.normal(size=12), "g": list("abcd") * 3})
    model = bmb.Model("y ~ x + (1 | g)", data)
    sampler = ResolvedSampler(
        draws=20, tune=20, chains=1, seed=0, target_accept=0.8, method="nutpie"
    )
    result = sample(model, sampler, lambda _: None)
    with tempfile.TemporaryDirectory(prefix="hbm-warm-up-") as folder:
        artifacts = Artifacts(Path(folder))
        store_results(artifacts, new_fit_id(), model, result.posterior, result.sample_stats)
    seconds = time.perf_counter() - started
    log.info("worker warmed up in %.1f s", seconds)
    return seconds
