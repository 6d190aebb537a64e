"""A fit's results on disk: posterior draws (netCDF, h5netcdf) and the JSON resources the
API serves, each written atomically, with a manifest written last.

Results are first computed in memory (``result_files``: the netCDF file too, so that HDF5
never sees a failing disk: a write error inside HDF5 left the pool process to crash later),
then written (``write_results``); ``results.json``, the manifest, goes last and says the
results are complete and for which request (the digest of its spec). A later run of the same
fit (its worker lost Redis before it could record success) finds them and does not sample
again.
"""

from __future__ import annotations

import hashlib
from typing import Any

import bambi as bmb
import xarray as xr
from pydantic import BaseModel, RootModel

from service.core.artifacts import (
    DIAGNOSTICS_FILE,
    FACTORS_FILE,
    GROUPS_FILE,
    MANIFEST_FILE,
    PRIORS_FILE,
    SUMMARY_FILE,
    Artifacts,
    group_file,
)
from service.core.errors import DamagedResults
from service.core.schemas import FitSpec, GroupFactors, GroupInfo, Priors, SamplerRun
from worker.modeling.describe import priors_used
from worker.modeling.parameterization import Choice
from worker.modeling.summaries import DEFAULT_INTERVAL, diagnose, group_effects, summarize

POSTERIOR_FILE = "posterior.nc"
#: The sampler statistics are stored as one (chain, draw, stat) float variable: written as
#: twenty variables, their netCDF metadata took 0.3 s of every fit's 0.5 s of storing.
STATS_VARIABLE = "sampler_stats"


def posterior_bytes(posterior: xr.Dataset, sample_stats: xr.Dataset) -> memoryview:
    """The posterior and the numeric sampler statistics as one netCDF file, in memory:
    groups ``posterior`` and ``sample_stats`` (the latter packed, see ``STATS_VARIABLE``)."""
    tree = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": _packed(sample_stats)})
    written: memoryview = tree.to_netcdf(engine="h5netcdf")
    return written


def save_posterior(
    artifacts: Artifacts, fit_id: str, posterior: xr.Dataset, sample_stats: xr.Dataset
) -> None:
    """Store the posterior and sampler statistics (see ``posterior_bytes``)."""
    artifacts.write_bytes(fit_id, POSTERIOR_FILE, posterior_bytes(posterior, sample_stats))


def load_posterior(artifacts: Artifacts, fit_id: str) -> tuple[xr.Dataset, xr.Dataset]:
    """The stored posterior and sampler statistics (as floats), loaded into memory;
    DamagedResults if the file is not a readable posterior."""
    with artifacts.local_copy(fit_id, POSTERIOR_FILE) as path:
        try:
            with xr.open_datatree(path, engine="h5netcdf") as tree:
                posterior = tree["posterior"].to_dataset().load()
                stats = tree["sample_stats"].to_dataset().load()
        except (OSError, ValueError, KeyError) as exc:
            raise artifacts.damaged(fit_id, POSTERIOR_FILE) from exc
    return posterior, _unpacked(stats)


def _packed(sample_stats: xr.Dataset) -> xr.Dataset:
    """Every numeric per-draw statistic as one float variable with a ``stat`` dimension."""
    names = [
        str(name)
        for name, values in sample_stats.data_vars.items()
        if values.dtype.kind in "biuf" and values.dims == ("chain", "draw")
    ]
    if not names:
        return xr.Dataset()
    packed = xr.concat([sample_stats[n].astype(float) for n in names], dim="stat")
    return xr.Dataset({STATS_VARIABLE: packed.assign_coords(stat=names)})


def _unpacked(stored: xr.Dataset) -> xr.Dataset:
    if STATS_VARIABLE not in stored:
        return xr.Dataset()
    return stored[STATS_VARIABLE].to_dataset(dim="stat")


def result_files(
    model: bmb.Model,
    posterior: xr.Dataset,
    sample_stats: xr.Dataset,
    fit_id: str,
    choice: Choice | None = None,
    likelihood: str | None = None,
    runs: list[SamplerRun] | None = None,
) -> dict[str, bytes | memoryview]:
    """Every result file's content: the posterior, then the response models the API serves
    as they are (summary, group effects by factor, the factors, diagnostics, priors)."""
    kind, prob = DEFAULT_INTERVAL
    groups = group_effects(model, posterior, fit_id, kind, prob)
    factors = GroupFactors(
        fit_id=fit_id,
        factors=[
            GroupInfo(
                factor=name,
                levels=len(effects.levels),
                terms=sorted({e.term for level in effects.levels for e in level.effects}),
            )
            for name, effects in groups.items()
        ],
    )
    diagnostics = diagnose(
        model,
        posterior,
        sample_stats,
        fit_id,
        parameterization=choice.parameterization if choice else None,
        parameterization_reason=choice.reason if choice else None,
        likelihood=likelihood,
    )
    diagnostics.runs = runs or []
    models: dict[str, BaseModel] = {
        SUMMARY_FILE: summarize(model, posterior, fit_id, kind, prob),
        GROUPS_FILE: RootModel[dict[str, str]](
            {factor: group_file(i) for i, factor in enumerate(groups)}
        ),
        **{group_file(i): effects for i, effects in enumerate(groups.values())},
        FACTORS_FILE: factors,
        DIAGNOSTICS_FILE: diagnostics,
        PRIORS_FILE: Priors(fit_id=fit_id, priors=priors_used(model)),
    }
    files: dict[str, bytes | memoryview] = {
        POSTERIOR_FILE: posterior_bytes(posterior, sample_stats)
    }
    files |= {name: body.model_dump_json().encode() for name, body in models.items()}
    return files


def spec_digest(spec: FitSpec) -> str:
    """What a manifest records of the request its results answer."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def write_results(
    artifacts: Artifacts,
    fit_id: str,
    files: dict[str, bytes | memoryview],
    manifest: dict[str, Any],
) -> None:
    """Write every result file, then the manifest that says they are complete and holds
    each file's SHA-256 (the API checks a file against it before serving it)."""
    for name, payload in files.items():
        artifacts.write_bytes(fit_id, name, payload)
    digests = {name: hashlib.sha256(payload).hexdigest() for name, payload in files.items()}
    artifacts.write_json(fit_id, MANIFEST_FILE, manifest | {"files": digests})


def stored_manifest(artifacts: Artifacts, fit_id: str, spec: FitSpec) -> dict[str, Any] | None:
    """The manifest of complete results stored for this very request, or None."""
    try:
        manifest: dict[str, Any] = artifacts.read_json(fit_id, MANIFEST_FILE)
    except (FileNotFoundError, DamagedResults):
        return None
    return manifest if manifest.get("spec_digest") == spec_digest(spec) else None


def store_results(
    artifacts: Artifacts,
    fit_id: str,
    model: bmb.Model,
    posterior: xr.Dataset,
    sample_stats: xr.Dataset,
    choice: Choice | None = None,
    likelihood: str | None = None,
) -> None:
    """Compute and write every result file (no manifest: for callers outside a fit run)."""
    files = result_files(model, posterior, sample_stats, fit_id, choice, likelihood)
    for name, payload in files.items():
        artifacts.write_bytes(fit_id, name, payload)
