"""Draws exports (``GET /v1/fits/{id}/draws``) hold exactly the stored posterior: netCDF
read back by ArviZ, CSV and Parquet in long and wide layouts parse back to the same
float64 values with the right chain and draw indices; columns are named as the summary and
diagnostics name the parameters; ``thin``, ``var``, ``groups`` and ``sample_stats`` choose
what is written; the cost is bounded before anything is written; and a 1,000-group posterior
of 4 x 1,000 draws is written in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arviz
import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import xarray as xr

from service.core.artifacts import Artifacts
from service.core.errors import InvalidRequest, NotFound
from service.core.protocol import DrawsCall
from service.core.schemas import FitSpec, ResolvedSampler
from tests.conftest import ROOT, SEED_CSV
from tests.support.files import fit_file, fit_folder
from worker.modeling.building import build_model
from worker.modeling.cache import FittedModel, FittedModelCache
from worker.modeling.sampling import sample
from worker.modeling.storage import load_posterior, save_posterior
from worker.modeling.summaries import diagnose
from worker.outputs.draws import Selection, quoted, select, write_csv, write_draws

FIT_ID = "d" * 32
NO_LIMIT = 10**12
#: Labels a CSV writer must quote, and one that is not ASCII.
SCHOOLS = {1: 'Hillside, "North"', 2: "Ünïversity", 3: "St. Mary's"}
PARAMETERS = ["Intercept", "C(band)", "1|school_sigma", "sigma"]


@dataclass
class Stored:
    """A fit as the worker sees it (cached model + posterior), and the draws on disk."""

    artifacts: Artifacts
    fitted: FittedModel
    posterior: xr.Dataset
    stats: xr.Dataset

    def export(self, max_values: int = NO_LIMIT, **fields: Any) -> Path:
        call = DrawsCall(fit_id=FIT_ID, revision="r", **fields)
        written = write_draws(self.artifacts, call, self.fitted, max_values)
        path = fit_file(self.artifacts, FIT_ID, written.name)
        assert path.stat().st_size == written.size
        return path


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    """The seed study (schools renamed, a categorical predictor added), 2 x 60 draws,
    stored through the fit's own writer and loaded through the worker's cache."""
    data = pd.read_csv(SEED_CSV)
    sampler = ResolvedSampler(
        draws=60, tune=150, chains=2, seed=3, target_accept=0.9, method="nutpie"
    )
    spec = FitSpec(
        formula="score ~ C(band) + (1 | school)",
        family="gaussian",
        link="identity",
        columns={
            "school": [SCHOOLS.get(s, f"school {s}") for s in data.school],
            "band": [["low", "mid", "high"][s % 3] for s in data.school],
            "score": data.score.tolist(),
        },
        sampler=sampler,
    )
    result = sample(build_model(spec), sampler, lambda _: None)
    artifacts = Artifacts(tmp_path_factory.mktemp("draws"))
    artifacts.write_spec(FIT_ID, spec)
    save_posterior(artifacts, FIT_ID, result.posterior, result.sample_stats)
    fitted = FittedModelCache(artifacts, 1).get(FIT_ID, "r")
    posterior, stats = load_posterior(artifacts, FIT_ID)
    return Stored(artifacts, fitted, posterior, stats)


def flat(posterior: xr.Dataset, names: list[str]) -> dict[str, np.ndarray]:
    """Each scalar's (chain, draw) draws by its expected name (every variable here has at
    most one dimension besides chain and draw)."""
    columns: dict[str, np.ndarray] = {}
    for name in names:
        variable = posterior[name].transpose("chain", "draw", ...)
        if variable.ndim == 2:
            columns[name] = variable.values
            continue
        dim = variable.dims[2]
        for i, label in enumerate(posterior[dim].values):
            columns[f"{name}[{label}]"] = variable.values[:, :, i]
    return columns


def bits(values: Any) -> np.ndarray:
    """float64 values as their bits: equality of these is exact equality."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.float64)).view(np.int64)


def assert_wide(table: pd.DataFrame, expected: dict[str, np.ndarray], thin: int = 1) -> None:
    """A wide table holds exactly ``expected``, one row per (chain, draw), in order."""
    chains, draws = next(iter(expected.values()))[:, ::thin].shape
    assert list(table.columns) == ["chain", "draw", *expected]
    assert table["chain"].tolist() == np.repeat(np.arange(chains), draws).tolist()
    assert table["draw"].tolist() == np.tile(np.arange(0, draws * thin, thin), chains).tolist()
    for name, values in expected.items():
        np.testing.assert_array_equal(bits(table[name]), bits(values[:, ::thin].ravel()), name)


def assert_long(table: pd.DataFrame, expected: dict[str, np.ndarray]) -> None:
    """A long table holds exactly ``expected``: parameter by parameter, chains and draws in
    order."""
    chains, draws = next(iter(expected.values())).shape
    assert list(table.columns) == ["chain", "draw", "parameter", "value"]
    assert (
        table["parameter"].astype(str).tolist()
        == np.repeat(list(expected), chains * draws).tolist()
    )
    assert (
        table["chain"].tolist()
        == np.tile(np.repeat(np.arange(chains), draws), len(expected)).tolist()
    )
    assert table["draw"].tolist() == np.tile(np.arange(draws), chains * len(expected)).tolist()
    everything = np.concatenate([values.ravel() for values in expected.values()])
    np.testing.assert_array_equal(bits(table["value"]), bits(everything))


def stats_of(stored: Stored) -> dict[str, np.ndarray]:
    """The exported statistics' expected values: stored ones under ArviZ's names."""
    renamed = {
        "lp": "logp",
        "acceptance_rate": "mean_tree_accept",
        "diverging": "diverging",
        "energy": "energy",
        "energy_error": "energy_error",
        "max_energy_error": "max_energy_error",
        "tree_depth": "depth",
        "reached_max_treedepth": "maxdepth_reached",
        "n_steps": "n_steps",
        "step_size": "step_size",
        "step_size_bar": "step_size_bar",
    }
    return {name: stored.stats[source].values for name, source in renamed.items()}


# ----------------------------------------------------------------------------- netCDF


def test_netcdf_is_read_back_by_arviz_as_the_stored_draws(stored: Stored) -> None:
    tree = arviz.from_netcdf(stored.export(format="netcdf", groups=True, sample_stats=True))
    posterior = tree["posterior"].to_dataset()
    assert list(posterior.data_vars) == [*PARAMETERS, "1|school"]
    for name in posterior.data_vars:
        exported, original = posterior[name], stored.posterior[name]
        assert exported.dims == original.dims
        np.testing.assert_array_equal(bits(exported.values), bits(original.values))
    assert posterior["school__factor_dim"].values.tolist() == (
        stored.posterior["school__factor_dim"].values.tolist()
    )
    assert 'Hillside, "North"' in posterior["school__factor_dim"].values
    assert posterior["draw"].values.tolist() == list(range(60))
    stats = tree["sample_stats"].to_dataset()
    assert stats["diverging"].dtype == bool and stats["tree_depth"].dtype == np.int64
    for name, values in stats_of(stored).items():
        np.testing.assert_array_equal(stats[name].values.astype(float), values, name)


def test_netcdf_holds_only_the_summarys_parameters_unless_asked_for_more(
    stored: Stored,
) -> None:
    tree = arviz.from_netcdf(stored.export(format="netcdf"))
    assert list(tree.children) == ["posterior"]
    assert list(tree["posterior"].to_dataset().data_vars) == PARAMETERS


# ----------------------------------------------------------------------- CSV, Parquet


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_a_wide_table_reads_back_to_the_exact_stored_draws(
    stored: Stored, file_format: str
) -> None:
    path = stored.export(format=file_format, layout="wide", groups=True)
    table = pd.read_csv(path) if file_format == "csv" else pq.read_table(path).to_pandas()
    assert_wide(table, flat(stored.posterior, [*PARAMETERS, "1|school"]))


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_a_long_table_reads_back_to_the_exact_stored_draws(
    stored: Stored, file_format: str
) -> None:
    path = stored.export(format=file_format, layout="long", groups=True)
    table = pd.read_csv(path) if file_format == "csv" else pq.read_table(path).to_pandas()
    assert_long(table, flat(stored.posterior, [*PARAMETERS, "1|school"]))


def test_parameters_are_named_as_the_diagnostics_name_them(stored: Stored) -> None:
    fitted = stored.fitted
    diagnostics = diagnose(fitted.model, stored.posterior, stored.stats, FIT_ID)
    header = pd.read_csv(stored.export(format="csv", groups=True), nrows=0).columns
    assert set(header[2:]) == {p.name for p in diagnostics.parameters}
    assert '1|school[Hillside, "North"]' in header and "C(band)[mid]" in header


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_sampler_statistics_come_only_when_asked_with_their_types_in_wide_tables(
    stored: Stored, file_format: str
) -> None:
    def read(path: Path) -> pd.DataFrame:
        return pd.read_csv(path) if file_format == "csv" else pq.read_table(path).to_pandas()

    assert not [c for c in read(stored.export(format=file_format)).columns if c[0] == "."]
    wide = read(stored.export(format=file_format, sample_stats=True))
    expected = stats_of(stored)
    assert list(wide.columns[-len(expected) :]) == [f".sample_stats.{s}" for s in expected]
    assert wide[".sample_stats.diverging"].dtype == bool
    assert wide[".sample_stats.tree_depth"].dtype == np.int64
    for name, values in expected.items():
        np.testing.assert_array_equal(wide[f".sample_stats.{name}"].astype(float), values.ravel())
    long = read(stored.export(format=file_format, layout="long", sample_stats=True))
    assert_long(
        long,
        flat(stored.posterior, PARAMETERS)
        | {f".sample_stats.{name}": values for name, values in expected.items()},
    )


@pytest.mark.parametrize("file_format", ["csv", "parquet", "netcdf"])
def test_thin_keeps_every_kth_draw_under_its_own_index(stored: Stored, file_format: str) -> None:
    path = stored.export(format=file_format, thin=7, groups=True)
    expected = flat(stored.posterior, [*PARAMETERS, "1|school"])
    if file_format == "netcdf":
        posterior = arviz.from_netcdf(path)["posterior"].to_dataset()
        assert posterior["draw"].values.tolist() == list(range(0, 60, 7))
        expected_thinned = stored.posterior.isel(draw=slice(None, None, 7))
        for name in posterior.data_vars:
            np.testing.assert_array_equal(posterior[name].values, expected_thinned[name].values)
        return
    table = pd.read_csv(path) if file_format == "csv" else pq.read_table(path).to_pandas()
    assert_wide(table, expected, thin=7)


def test_var_chooses_variables_and_keeps_the_summarys_order(stored: Stored) -> None:
    header = pd.read_csv(stored.export(format="csv", var=("sigma", "Intercept")), nrows=0)
    assert list(header.columns) == ["chain", "draw", "Intercept", "sigma"]
    path = stored.export(format="parquet", layout="long", var=("1|school",), groups=True)
    names = pq.read_table(path).column("parameter").unique().to_pylist()
    assert len(names) == 20 and all(n.startswith("1|school[") for n in names)


def test_an_unknown_variable_or_a_group_effect_without_groups_is_refused_naming_var(
    stored: Stored,
) -> None:
    with pytest.raises(InvalidRequest) as unknown:
        stored.export(format="csv", var=("sigma", "tau"))
    assert [e.field for e in unknown.value.errors] == ["var"]
    assert "Intercept" in unknown.value.errors[0].message and "tau" not in unknown.value.detail
    with pytest.raises(InvalidRequest) as hidden:
        stored.export(format="csv", var=("1|school",))
    assert hidden.value.errors[0].field == "var"
    assert "groups=true" in hidden.value.errors[0].message


def test_an_export_over_the_limit_is_refused_before_anything_is_written(stored: Stored) -> None:
    values = 2 * 60 * (1 + 2 + 1 + 1 + 20)  # chains x draws x scalars
    before = set(fit_folder(stored.artifacts, FIT_ID).iterdir())
    with pytest.raises(InvalidRequest) as refused:
        stored.export(max_values=values - 1, format="parquet", groups=True, thin=1)
    error = refused.value.errors[0]
    assert error.field == "thin" and f"{values:,} values" in error.message
    assert "thin=2" in error.message  # 2 x 30 x 25 values fit
    assert set(fit_folder(stored.artifacts, FIT_ID).iterdir()) == before
    stored.export(max_values=values - 1, format="parquet", groups=True, thin=2)
    stored.export(max_values=values, format="parquet", groups=True, thin=1)


def test_the_same_call_is_the_same_file_written_once(stored: Stored) -> None:
    call = DrawsCall(fit_id=FIT_ID, revision="r", format="csv", var=("sigma",))
    assert DrawsCall.model_validate(call.model_dump(mode="json")) == call
    assert call.file_name().startswith("draws-") and call.file_name().endswith(".csv")
    other = DrawsCall(fit_id="e" * 32, revision="s", format="csv", var=("sigma",))
    assert other.file_name() == call.file_name()  # the fit's folder tells the fits apart
    assert DrawsCall(**call.model_dump(exclude={"thin"}), thin=2).file_name() != call.file_name()
    first = stored.export(format="csv", var=("sigma",))
    written = first.stat().st_mtime_ns
    assert stored.export(format="csv", var=("sigma",)).stat().st_mtime_ns == written


def test_a_deleted_fit_has_no_export(stored: Stored, tmp_path: Path) -> None:
    gone = Stored(Artifacts(tmp_path), stored.fitted, stored.posterior, stored.stats)
    with pytest.raises(NotFound):
        gone.export(format="csv")
    assert not (tmp_path / "fits").exists()


def test_csv_floats_are_the_shortest_decimals_that_read_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=20_000) * 10.0 ** rng.integers(-300, 300, 20_000)
    special = [0.0, -0.0, 0.1, 1 / 3, 5e-324, 1.7976931348623157e308, np.nan, np.inf, -np.inf]
    values = np.concatenate([values, special]).reshape(1, -1)
    posterior = xr.Dataset(
        {'a, "b"': (("chain", "draw"), values)},
        coords={"chain": [0], "draw": np.arange(values.size)},
    )
    selection = Selection(['a, "b"'], posterior, xr.Dataset())
    for layout in ("wide", "long"):
        path = tmp_path / f"{layout}.csv"
        write_csv(path, selection, layout)  # type: ignore[arg-type]
        table = pd.read_csv(path)
        column = 'a, "b"' if layout == "wide" else "value"
        np.testing.assert_array_equal(bits(table[column]), bits(values.ravel()))
        text = path.read_text()
        assert ",0.1\n" in text and ",0.3333333333333333\n" in text and ",5e-324\n" in text
        assert ",NaN\n" in text and ",Inf\n" in text and ",-Inf\n" in text
        first_line = text.split("\n", 1)[0]
        assert first_line == (
            'chain,draw,"a, ""b"""' if layout == "wide" else "chain,draw,parameter,value"
        )
    assert quoted("1|g[a]") == "1|g[a]" and quoted('a, "b"') == '"a, ""b"""'


# ---------------------------------------------------------------------- bounded memory


def synthetic(
    n_groups: int, chains: int, draws: int, x: str = "x"
) -> tuple[FitSpec, xr.Dataset, xr.Dataset]:
    """A ``y ~ x + (1 | g)`` request with ``n_groups`` groups and a posterior of its shape
    (random draws, with nutpie's statistics and types): what a fit would store. ``x`` names
    the predictor."""
    rng = np.random.default_rng(2)
    rows = np.repeat(np.arange(n_groups), 2)
    sampler = ResolvedSampler(
        draws=draws, tune=draws, chains=chains, seed=1, target_accept=0.8, method="nutpie"
    )
    spec = FitSpec(
        formula=f"y ~ `{x}` + (1 | g)",
        family="gaussian",
        link="identity",
        columns={
            "g": [f"g{i}" for i in rows],
            x: rng.normal(size=rows.size).tolist(),
            "y": rng.normal(size=rows.size).tolist(),
        },
        sampler=sampler,
    )
    model = build_model(spec)
    model.build()
    levels = list(model.backend.model.coords["g__factor_dim"])
    shape = (chains, draws)
    sample_dims = ("chain", "draw")
    group_dims = (*sample_dims, "g__factor_dim")
    posterior = xr.Dataset(
        {
            "Intercept": (sample_dims, rng.normal(size=shape)),
            x: (sample_dims, rng.normal(size=shape)),
            "sigma": (sample_dims, rng.gamma(2.0, size=shape)),
            "1|g_sigma": (sample_dims, rng.gamma(2.0, size=shape)),
            "1|g_offset": (group_dims, rng.normal(size=(*shape, n_groups))),
            "1|g": (group_dims, rng.normal(size=(*shape, n_groups))),
        },
        coords={"chain": np.arange(chains), "draw": np.arange(draws), "g__factor_dim": levels},
    )
    stats = xr.Dataset(
        {
            "logp": (sample_dims, rng.normal(-1000, 10, shape)),
            "energy": (sample_dims, rng.normal(1000, 10, shape)),
            "energy_error": (sample_dims, rng.normal(size=shape)),
            "max_energy_error": (sample_dims, rng.normal(size=shape)),
            "mean_tree_accept": (sample_dims, rng.uniform(size=shape)),
            "step_size": (sample_dims, rng.uniform(size=shape)),
            "step_size_bar": (sample_dims, rng.uniform(size=shape)),
            "depth": (sample_dims, rng.integers(1, 8, shape).astype(np.uint64)),
            "n_steps": (sample_dims, rng.integers(1, 255, shape).astype(np.uint64)),
            "diverging": (sample_dims, rng.uniform(size=shape) < 0.01),
            "maxdepth_reached": (sample_dims, np.zeros(shape, bool)),
        },
        coords={"chain": np.arange(chains), "draw": np.arange(draws)},
    )
    return spec, posterior, stats


def test_a_parameter_named_like_a_statistic_keeps_the_statistics_out_of_tables() -> None:
    spec, posterior, stats = synthetic(3, 1, 5, x=".sample_stats.lp")
    fitted = FittedModel(spec, build_model(spec), posterior, stats)
    call = {"fit_id": FIT_ID, "revision": "r", "sample_stats": True}
    with pytest.raises(InvalidRequest) as refused:
        select(fitted, DrawsCall(**call, format="csv"))
    assert refused.value.errors[0].field == "sample_stats"
    both = select(fitted, DrawsCall(**call, format="netcdf"))
    assert ".sample_stats.lp" in both.names and "lp" in both.stat_names


def _peak_rss_during(action: Callable[[], object]) -> tuple[int, float]:
    """The process's peak RSS while ``action`` runs (sampled every 2 ms), and its time."""
    process = psutil.Process()
    peak = process.memory_info().rss
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    try:
        action()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
    return max(peak, process.memory_info().rss), seconds


def measure_exports(folder: str, n_groups: int, chains: int, draws: int) -> dict[str, Any]:
    """Store a synthetic posterior, load it as a worker does, then export it in every format
    and layout (group effects and statistics included): per export its file size, time and
    peak RSS above the RSS before it (run in a fresh process: see the test below)."""
    artifacts = Artifacts(Path(folder))
    spec, posterior, stats = synthetic(n_groups, chains, draws)
    artifacts.write_spec(FIT_ID, spec)
    save_posterior(artifacts, FIT_ID, posterior, stats)
    del posterior, stats
    fitted = FittedModelCache(artifacts, 1).get(FIT_ID, "r")
    figures: dict[str, Any] = {
        "posterior_bytes": fit_file(artifacts, FIT_ID, "posterior.nc").stat().st_size
    }
    for file_format, layout in [
        ("netcdf", "wide"),
        ("csv", "wide"),
        ("csv", "long"),
        ("parquet", "wide"),
        ("parquet", "long"),
    ]:
        call = DrawsCall(
            fit_id=FIT_ID,
            revision="r",
            format=file_format,  # type: ignore[arg-type]
            layout=layout,  # type: ignore[arg-type]
            groups=True,
            sample_stats=True,
        )
        before = psutil.Process().memory_info().rss
        answer: list[Any] = []
        peak, seconds = _peak_rss_during(
            lambda call=call, answer=answer: answer.append(
                write_draws(artifacts, call, fitted, NO_LIMIT)
            )
        )
        figures[f"{file_format}-{layout}"] = {
            "bytes": answer[0].size,
            "seconds": round(seconds, 2),
            "peak_growth_mb": round((peak - before) / 2**20, 1),
        }
    return figures


def test_a_thousand_groups_of_four_thousand_draws_export_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """Every export of a 1,000-group posterior (4 chains x 1,000 draws: 4 million values
    with the group effects) grows its process by well under 300 MB."""
    code = (
        "import json, sys; from tests.modeling.test_draws_export import measure_exports; "
        f"print(json.dumps(measure_exports({str(tmp_path)!r}, 1000, 4, 1000)))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(figures, indent=1))
    for name, export in figures.items():
        if name != "posterior_bytes":
            assert export["peak_growth_mb"] < 300, (name, export)
            assert export["bytes"] > 4 * 1000 * 1000 * 8 * 0.9, (name, export)  # all values
