"""The seed study every system fits: data, model, sampler settings and shared statistics."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA_CSV = ROOT / "data" / "seed_students.csv"

FORMULA = "score ~ (1 | school)"
FAMILY = "gaussian"
DRAWS = 1000
TUNE = 1000
CHAINS = 4
SEED = 1

#: The three main parameters under their Bambi names (the names every result uses).
PARAMETERS = ("Intercept", "1|school_sigma", "sigma")


def load_records() -> list[dict[str, Any]]:
    """The 484 students as ``{"school": int, "score": float}`` rows."""
    with DATA_CSV.open() as handle:
        return [
            {"school": int(row["school"]), "score": float(row["score"])}
            for row in csv.DictReader(handle)
        ]


def load_frame() -> Any:
    """The seed study as a pandas DataFrame (imported lazily: the parent never needs it)."""
    import pandas as pd

    return pd.DataFrame(load_records())


def posterior_stats(posterior: Any) -> dict[str, Any]:
    """Means, bulk ESS and R-hat of :data:`PARAMETERS` in a (chain, draw) xarray Dataset."""
    import arviz as az

    ds = posterior[list(PARAMETERS)]
    ess = az.ess(ds, method="bulk")
    rhat = az.rhat(ds)
    per_param = {
        name: {
            "mean": float(ds[name].mean()),
            "ess_bulk": float(ess[name]),
            "r_hat": float(rhat[name]),
        }
        for name in PARAMETERS
    }
    return summarize_parameters(per_param)


def summarize_parameters(per_param: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The headline figures from per-parameter means, ESS and R-hat."""
    return {
        "parameters": per_param,
        "means": {name: per_param[name]["mean"] for name in PARAMETERS},
        "min_ess_bulk": min(p["ess_bulk"] for p in per_param.values()),
        "max_r_hat": max(p["r_hat"] for p in per_param.values()),
    }


def as_dataset(group: Any) -> Any:
    """An xarray Dataset from a DataTree node or a Dataset."""
    import xarray as xr

    return group if isinstance(group, xr.Dataset) else group.to_dataset()
