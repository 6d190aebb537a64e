"""Posterior draws on disk: netCDF (h5netcdf), written atomically."""

from __future__ import annotations

import xarray as xr

from service.core.artifacts import Artifacts

POSTERIOR_FILE = "posterior.nc"


def save_posterior(
    artifacts: Artifacts, fit_id: str, posterior: xr.Dataset, sample_stats: xr.Dataset
) -> None:
    """Store the posterior and the numeric sampler statistics in one netCDF file."""
    stats = sample_stats[
        [v for v in sample_stats.data_vars if sample_stats[v].dtype.kind in "biuf"]
    ]
    tree = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": stats})
    with artifacts.atomic_path(fit_id, POSTERIOR_FILE) as tmp:
        tree.to_netcdf(tmp, engine="h5netcdf")


def load_posterior(artifacts: Artifacts, fit_id: str) -> tuple[xr.Dataset, xr.Dataset]:
    """The stored posterior and sampler statistics, loaded into memory."""
    with xr.open_datatree(artifacts.path(fit_id, POSTERIOR_FILE), engine="h5netcdf") as tree:
        posterior = tree["posterior"].to_dataset().load()
        stats = tree["sample_stats"].to_dataset().load()
    return posterior, stats
