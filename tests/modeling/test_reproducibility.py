"""A seeded fit is its draws: bit-identical in every process, whatever it compiled before.

The service promises that a seeded request is its fit, so the draws may not depend on the
process that samples them. Two fresh processes (different hash seeds) fit the seed study
as a fit worker does; the first starts with an empty PyTensor compile cache and compiles
everything, the second finds the first one's functions in that cache and loads them. With
numba's fast-math, code compiled in the first way and code loaded in the second came out
different in the last bits, and so did the draws (see ``compiled``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FIT = """
import hashlib
import pandas as pd
from service.core.schemas import FitSpec, ResolvedSampler
from worker.modeling import parameterization
from worker.modeling.building import build_model
from worker.modeling.compiled import CompiledModels
from worker.modeling.sampling import sample

data = pd.read_csv("data/seed_students.csv")
sampler = ResolvedSampler(
    draws=200, tune=200, chains=2, seed=2024, target_accept=0.8, method="nutpie"
)
spec = FitSpec(
    formula="score ~ (1 | school)",
    family="gaussian",
    link="identity",
    columns={"school": data["school"].tolist(), "score": data["score"].tolist()},
    sampler=sampler,
)
model = build_model(spec)
choice = parameterization.apply(model, "auto")
result = sample(
    model, sampler, lambda _: None,
    compiled_models=CompiledModels(4), centre_on=choice.centre_on_intercept,
)
digest = hashlib.sha256()
for name in sorted(result.posterior.data_vars):
    digest.update(name.encode())
    digest.update(result.posterior[name].values.tobytes())
print("draws", digest.hexdigest())
"""


def fit_in_a_fresh_process(hash_seed: str, compile_cache: Path) -> str:
    """The digest of the seed study's draws, fitted in a new Python process."""
    env = {
        **os.environ,
        "PYTHONHASHSEED": hash_seed,
        "PYTENSOR_FLAGS": f"base_compiledir={compile_cache}",
    }
    run = subprocess.run(
        [sys.executable, "-c", FIT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("draws ")]
    assert lines, run.stdout[-2000:]
    return lines[-1]


def test_a_seeded_fit_draws_the_same_bits_compiled_fresh_or_loaded_from_the_cache(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "pytensor"
    compiled_fresh = fit_in_a_fresh_process("1", cache)
    assert any((cache / "numba").iterdir()), "the first process filled the compile cache"
    loaded = fit_in_a_fresh_process("2", cache)
    assert compiled_fresh == loaded
