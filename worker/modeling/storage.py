"""A fit's results on disk: posterior draws (netCDF, h5netcdf) and the JSON resources the
API serves, each written atomically."""

from __future__ import annotations

import bambi as bmb
import xarray as xr

from service.core.artifacts import Artifacts
from worker.modeling.describe import priors_used
from worker.modeling.parameterization import Choice
from worker.modeling.summaries import DEFAULT_INTERVAL, diagnose, group_effects, summarize

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


def store_results(
    artifacts: Artifacts,
    fit_id: str,
    model: bmb.Model,
    posterior: xr.Dataset,
    sample_stats: xr.Dataset,
    choice: Choice | None = None,
) -> None:
    """The posterior, then the summary, group effects, diagnostics and priors as JSON."""
    save_posterior(artifacts, fit_id, posterior, sample_stats)
    kind, prob = DEFAULT_INTERVAL
    results = {
        "summary.json": summarize(model, posterior, fit_id, kind, prob),
        "groups.json": group_effects(model, posterior, fit_id, kind, prob),
        "diagnostics.json": diagnose(model, posterior, sample_stats, fit_id)
        | (choice.diagnostics() if choice else {}),
        "priors.json": {"fit_id": fit_id, "priors": priors_used(model)},
    }
    for name, body in results.items():
        artifacts.write_json(fit_id, name, body)
