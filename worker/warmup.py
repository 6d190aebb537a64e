"""Warm the compiler when a fit worker starts.

The first model a process compiles pays for initialising numba and LLVM (about 5 s here);
later models of any structure compile in half the time or less. A fit worker therefore
compiles a tiny model once in its main process, before the pool forks, so every pool
process (including the ones that replace recycled or killed processes) starts warm.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def warm_up() -> float:
    """Build and compile a tiny varying-intercept model; the seconds it took."""
    import bambi as bmb
    import nutpie

    from worker.modeling.sampling import stored_variables

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"y": rng.normal(size=12), "x": rng.normal(size=12), "g": list("abcd") * 3})
    model = bmb.Model("y ~ x + (1 | g)", data)
    model.build()
    nutpie.compile_pymc_model(model.backend.model, var_names=stored_variables(model))
    seconds = time.perf_counter() - started
    log.info("compiler warmed up in %.1f s", seconds)
    return seconds
