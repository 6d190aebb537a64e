"""Means, bulk ESS and R-hat of a case's main parameters, the same way for every system."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def posterior_stats(posterior: Any, parameters: Sequence[str]) -> dict[str, Any]:
    """Means, bulk ESS and R-hat of ``parameters`` in a (chain, draw) xarray Dataset."""
    import arviz as az

    ds = posterior[list(parameters)]
    ess = az.ess(ds, method="bulk")
    rhat = az.rhat(ds)
    per_param = {
        name: {
            "mean": float(ds[name].mean()),
            "ess_bulk": float(ess[name]),
            "r_hat": float(rhat[name]),
        }
        for name in parameters
    }
    return summarize_parameters(per_param)


def summarize_parameters(per_param: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The headline figures from per-parameter means, ESS and R-hat (in the dict's order)."""
    return {
        "parameters": per_param,
        "means": {name: p["mean"] for name, p in per_param.items()},
        "min_ess_bulk": min(p["ess_bulk"] for p in per_param.values()),
        "max_r_hat": max(p["r_hat"] for p in per_param.values()),
    }


def as_dataset(group: Any) -> Any:
    """An xarray Dataset from a DataTree node or a Dataset."""
    import xarray as xr

    return group if isinstance(group, xr.Dataset) else group.to_dataset()
