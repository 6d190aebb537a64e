"""A fit's posterior and sampler statistics survive the trip to disk and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from service.core.artifacts import Artifacts
from worker.modeling.storage import load_posterior, save_posterior


def test_posterior_and_sampler_statistics_are_stored_and_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    posterior = xr.Dataset(
        {
            "Intercept": (("chain", "draw"), rng.normal(size=(2, 50))),
            "1|school": (
                ("chain", "draw", "school__factor_dim"),
                rng.normal(size=(2, 50, 3)),
            ),
        },
        coords={"chain": [0, 1], "draw": np.arange(50), "school__factor_dim": ["a", "b", "c"]},
    )
    stats = xr.Dataset(
        {
            "diverging": (("chain", "draw"), rng.random((2, 50)) < 0.1),
            "depth": (("chain", "draw"), rng.integers(1, 6, (2, 50))),
            "energy": (("chain", "draw"), rng.normal(size=(2, 50))),
        },
        coords={"chain": [0, 1], "draw": np.arange(50)},
    )
    artifacts = Artifacts(tmp_path)
    save_posterior(artifacts, "f1", posterior, stats)
    loaded_posterior, loaded_stats = load_posterior(artifacts, "f1")
    xr.testing.assert_identical(loaded_posterior, posterior)
    assert sorted(loaded_stats.data_vars) == ["depth", "diverging", "energy"]
    for name in stats.data_vars:
        np.testing.assert_array_equal(loaded_stats[name].values, stats[name].values.astype(float))
