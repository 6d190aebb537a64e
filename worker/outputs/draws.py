"""A fit's posterior draws as a file: netCDF, CSV or Parquet, written block by block.

What a file holds (the names are stable; README and docs/design.md say the same):

- **netCDF** is ArviZ's layout (``arviz.from_netcdf`` reads it): a group ``posterior`` with
  each chosen variable in its own shape (``chain``, ``draw``, then its levels, e.g.
  ``school__factor_dim``) and, with ``sample_stats``, a group ``sample_stats``.
- **CSV and Parquet**, ``wide``: one row per draw, columns ``chain``, ``draw``, then one per
  parameter, then one per sampler statistic, ``.sample_stats.<name>``. ``long``: columns
  ``chain``, ``draw``, ``parameter``, ``value``, one row per draw of each parameter
  (parameter by parameter, each in chain and draw order); sampler statistics are the
  parameters ``.sample_stats.<name>``, their values as floats (diverging: 0 or 1).
- **Parameters** are named as ``/summary`` and ``/diagnostics`` name them: the variable
  (``Intercept``, ``sigma``, ``1|school_sigma``), and one element of a vector with its labels
  in brackets, joined by ", " when it has several dimensions (``1|school[Hillside]``).
  The columns follow the summary's order, then the group effects (``groups``).
- ``chain`` counts from 0; ``draw`` is the draw's index in its chain before thinning
  (``thin=10``: 0, 10, 20...), so thinned and whole exports line up.
- **Sampler statistics** take ArviZ's names (see ``SAMPLE_STATS``), with their types in
  netCDF and wide Parquet (diverging a boolean, tree_depth an integer).
- **Floats are exact**: float64 in netCDF and Parquet; in CSV the shortest decimal that
  reads back to the same double (Python's ``repr`` digits, written by Arrow: ``1`` for 1.0),
  non-finite values as ``NaN``, ``Inf`` and ``-Inf``, which R and pandas both read. Text
  (the long layout's ``parameter``) is always quoted, the header only where it must be.

Memory: a block holds at most ``BLOCK_VALUES`` values (2 MiB of float64), whatever the
size of the export; the draws are read from the worker's cached posterior, block by block
(a lazily opened posterior would be read the same way). Cost: an export of more than
``HBM_MAX_EXPORT_VALUES`` values (chains x kept draws x (parameters' elements + statistics))
is refused here, before a byte is written: a 422 naming ``thin`` with the thinning that
would fit (the API cannot count a model's elements: only the worker holds the model).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import bambi as bmb
import h5netcdf
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import xarray as xr
from bambi.utils import get_aliased_name

from service.core.artifacts import Artifacts
from service.core.errors import InvalidRequest, NotFound
from service.core.protocol import DrawsCall, FileWritten
from service.core.schemas import DrawsFormat, DrawsLayout
from worker.modeling.cache import FittedModel
from worker.modeling.summaries import group_terms, parameter_roles

#: The most values one block of an export holds (2 MiB of float64; blocks of 1 Mi values
#: grew a CSV export's process by 125 MB, these by under 75 MB).
BLOCK_VALUES = 1 << 18
#: What the sampler statistics' columns (wide) or parameters (long) start with.
STATS_PREFIX = ".sample_stats."
#: The sampler statistics exported: ArviZ's name -> (nutpie's, as stored; type).
SAMPLE_STATS: dict[str, tuple[str, str]] = {
    "lp": ("logp", "float"),
    "acceptance_rate": ("mean_tree_accept", "float"),
    "diverging": ("diverging", "bool"),
    "energy": ("energy", "float"),
    "energy_error": ("energy_error", "float"),
    "max_energy_error": ("max_energy_error", "float"),
    "tree_depth": ("depth", "int"),
    "reached_max_treedepth": ("maxdepth_reached", "bool"),
    "n_steps": ("n_steps", "int"),
    "step_size": ("step_size", "float"),
    "step_size_bar": ("step_size_bar", "float"),
}
_SAMPLE_DIMS = ("chain", "draw")
_NOT_FINITE = {b"nan": b"NaN", b"inf": b"Inf", b"-inf": b"-Inf"}
_ARROW_NOT_FINITE = re.compile(rb"(?<=,)(?:nan|-?inf)(?=[,\n])")


def write_draws(
    artifacts: Artifacts, call: DrawsCall, fitted: FittedModel, max_values: int
) -> FileWritten:
    """Write the call's file beside the fit's results, unless it is stored already.

    InvalidRequest (``var``, ``thin``, ``sample_stats``) before anything is written;
    NotFound when the fit was deleted meanwhile."""
    selection = select(fitted, call)
    check_cost(selection, fitted.posterior.sizes["draw"], max_values)
    name = call.file_name()
    try:
        if artifacts.exists(call.fit_id, name):
            return FileWritten(name=name, size=artifacts.size(call.fit_id, name))
        with artifacts.atomic_path(call.fit_id, name, create=False) as tmp:
            write(tmp, selection, call.format, call.layout)
            size = tmp.stat().st_size
        return FileWritten(name=name, size=size)
    except FileNotFoundError as exc:
        raise NotFound("the fit was deleted") from exc


# ------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """What one export holds: the chosen variables in order, and the sampler statistics
    (none without ``sample_stats``), both thinned and shaped (chain, draw, ...)."""

    names: list[str]
    posterior: xr.Dataset
    stats: xr.Dataset

    @property
    def chains(self) -> np.ndarray:
        """The chains' indices."""
        return np.asarray(self.posterior["chain"].values)

    @property
    def draws(self) -> np.ndarray:
        """The kept draws' indices (before thinning)."""
        return np.asarray(self.posterior["draw"].values)

    @property
    def stat_names(self) -> list[str]:
        """The exported statistics, by their ArviZ names."""
        return [str(name) for name in self.stats.data_vars]

    def size(self, name: str) -> int:
        """How many scalars one draw of a variable holds."""
        return math.prod(self.posterior[name].shape[2:])

    def n_values(self) -> int:
        """Every value the export holds."""
        scalars = sum(self.size(name) for name in self.names) + len(self.stat_names)
        return self.chains.size * self.draws.size * scalars

    def parameters(self) -> list[str]:
        """Every column of a wide export after ``chain`` and ``draw`` (every parameter of a
        long one), in order."""
        names = [n for name in self.names for n in element_names(name, self.posterior)]
        return names + [STATS_PREFIX + stat for stat in self.stat_names]


def exportable(model: bmb.Model, posterior: xr.Dataset) -> tuple[list[str], list[str]]:
    """The summary's parameters and the group effects (per-level variables), in order."""
    parameters = [name for name in parameter_roles(model) if name in posterior]
    effects: list[str] = []
    for terms in group_terms(model).values():
        for term in terms:
            name = get_aliased_name(term)
            if name in posterior and name not in effects and name not in parameters:
                effects.append(name)
    return parameters, effects


def select(fitted: FittedModel, call: DrawsCall) -> Selection:
    """The variables and statistics ``call`` asks for (InvalidRequest naming ``var`` for a
    name the fit does not have, or a group effect asked without ``groups``; naming
    ``sample_stats`` when a table's parameter, from a data column ``.sample_stats.x``, would
    read as a statistic)."""
    parameters, effects = exportable(fitted.model, fitted.posterior)
    names = parameters + effects if call.groups else parameters
    if call.var:
        wanted = set(call.var)
        if wanted - set(parameters) - set(effects):
            known = parameters + effects
            shown = ", ".join(known[:30]) + (", ..." if len(known) > 30 else "")
            raise InvalidRequest.one("var", f"names no variable of this fit; it has: {shown}")
        if not call.groups and wanted & set(effects):
            asked = ", ".join(n for n in effects if n in wanted)
            raise InvalidRequest.one("var", f"names group effects ({asked}): add groups=true")
        names = [name for name in names if name in wanted]
    tables = call.format != "netcdf"
    if call.sample_stats and tables and any(n.startswith(STATS_PREFIX) for n in names):
        raise InvalidRequest.one(
            "sample_stats",
            f"a parameter's name (a data column's) starts with {STATS_PREFIX} and would read "
            "as a sampler statistic in a table: ask for the statistics as netCDF",
        )
    kept = slice(None, None, call.thin)
    posterior = fitted.posterior[names].isel(draw=kept).transpose(*_SAMPLE_DIMS, ...)
    stats = typed_stats(fitted.sample_stats) if call.sample_stats else xr.Dataset()
    if stats.data_vars:
        stats = stats.isel(draw=kept).transpose(*_SAMPLE_DIMS)
    return Selection(names, posterior, stats)


def typed_stats(stored: xr.Dataset) -> xr.Dataset:
    """The exported sampler statistics under ArviZ's names, as booleans, integers or
    floats (they are stored as floats, see ``worker.modeling.storage``)."""
    stats: dict[str, xr.DataArray] = {}
    for name, (source, kind) in SAMPLE_STATS.items():
        if source not in stored:
            continue
        values = stored[source]
        if kind != "float" and bool(np.isfinite(values).all()):
            values = values.astype(bool if kind == "bool" else np.int64)
        else:
            values = values.astype(np.float64)
        stats[name] = values
    return xr.Dataset(stats)


def check_cost(selection: Selection, draws: int, max_values: int) -> None:
    """Refuse an export of more than ``max_values`` values, saying what would fit."""
    values = selection.n_values()
    if values <= max_values:
        return
    per_draw = values // (selection.chains.size * selection.draws.size)
    budget = max_values // (selection.chains.size * per_draw)  # kept draws per chain
    advice = (
        f"ask thin={math.ceil(draws / budget)} or more, or fewer variables (var)"
        if budget >= 1
        else "ask fewer variables (var)"
    )
    raise InvalidRequest.one(
        "thin",
        f"the export would hold {values:,} values (chains x kept draws x parameters and "
        f"statistics), over the limit of {max_values:,}: {advice}",
    )


def element_names(name: str, posterior: xr.Dataset) -> list[str]:
    """The names of a variable's scalars: ``name``, or ``name[label]`` for each element (as
    the summary and diagnostics name them)."""
    variable = posterior[name]
    dims = variable.dims[2:]
    if not dims:
        return [name]
    labels = [[str(label) for label in posterior[dim].values] for dim in dims]
    return [f"{name}[{', '.join(element)}]" for element in product(*labels)]


# ----------------------------------------------------------------------------- files


def write(path: Path, selection: Selection, file_format: DrawsFormat, layout: DrawsLayout) -> None:
    """Write the export to ``path``, block by block."""
    if file_format == "netcdf":
        write_netcdf(path, selection)
    elif file_format == "csv":
        write_csv(path, selection, layout)
    else:
        write_parquet(path, selection, layout)


def _wide_blocks(selection: Selection) -> Iterator[tuple[int, slice, np.ndarray]]:
    """(chain, kept draws, values: rows x parameters' scalars) per block of rows."""
    columns = max(1, sum(selection.size(name) for name in selection.names))
    rows = max(1, BLOCK_VALUES // columns)
    for chain in range(selection.chains.size):
        for start in range(0, selection.draws.size, rows):
            kept = slice(start, min(start + rows, selection.draws.size))
            parts = [
                selection.posterior[name]
                .isel(chain=chain, draw=kept)
                .values.reshape(kept.stop - start, -1)
                for name in selection.names
            ]
            yield chain, kept, np.concatenate(parts, axis=1, dtype=np.float64)


def _long_blocks(selection: Selection) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the block's first parameter, values: parameters x chains x draws) per
    block of parameters; the statistics come last, as floats."""
    per_element = selection.chains.size * selection.draws.size
    first = 0
    for name in selection.names:
        variable = selection.posterior[name]
        if variable.ndim == 2:
            yield first, variable.values[np.newaxis].astype(np.float64)
            first += 1
            continue
        level_dim = variable.dims[2]
        inner = math.prod(variable.shape[3:])
        step = max(1, BLOCK_VALUES // (per_element * inner))
        for start in range(0, variable.shape[2], step):
            block = variable.isel({level_dim: slice(start, start + step)}).values
            values = block.reshape(*block.shape[:2], -1).transpose(2, 0, 1)
            yield first, values.astype(np.float64)
            first += values.shape[0]
    for stat in selection.stat_names:
        yield first, selection.stats[stat].values[np.newaxis].astype(np.float64)
        first += 1


def _arrow_type(values: xr.DataArray) -> pa.DataType:
    kind = values.dtype.kind
    return pa.bool_() if kind == "b" else pa.int64() if kind in "iu" else pa.float64()


def table_schema(selection: Selection, layout: DrawsLayout) -> pa.Schema:
    """The columns of a CSV or Parquet export."""
    index = [pa.field("chain", pa.int64()), pa.field("draw", pa.int64())]
    if layout == "long":
        parameter = pa.field("parameter", pa.dictionary(pa.int32(), pa.string()))
        return pa.schema([*index, parameter, pa.field("value", pa.float64())])
    width = sum(selection.size(name) for name in selection.names)
    fields = [pa.field(name, pa.float64()) for name in selection.parameters()[:width]]
    fields += [
        pa.field(STATS_PREFIX + s, _arrow_type(selection.stats[s])) for s in selection.stat_names
    ]
    return pa.schema([*index, *fields])


def table_batches(
    selection: Selection, layout: DrawsLayout, schema: pa.Schema
) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """The rows of a CSV or Parquet export, a block at a time, and whether the block's
    floats are all finite."""
    chains = selection.chains.astype(np.int64)
    draws = selection.draws.astype(np.int64)
    if layout == "long":
        dictionary = pa.array(selection.parameters(), pa.string())
        chain_column = np.repeat(chains, draws.size)
        draw_column = np.tile(draws, chains.size)
        for first, values in _long_blocks(selection):
            count = values.shape[0]
            codes = np.repeat(np.arange(first, first + count, dtype=np.int32), chain_column.size)
            columns = [
                pa.array(np.tile(chain_column, count)),
                pa.array(np.tile(draw_column, count)),
                pa.DictionaryArray.from_arrays(pa.array(codes), dictionary),
                pa.array(values.ravel()),
            ]
            finite = bool(np.isfinite(values).all())
            yield pa.RecordBatch.from_arrays(columns, schema=schema), finite
        return
    stats = [selection.stats[s].values for s in selection.stat_names]
    for chain, kept, values in _wide_blocks(selection):
        rows = kept.stop - kept.start
        columns = [
            pa.array(np.full(rows, chains[chain])),
            pa.array(draws[kept]),
            *(pa.array(values[:, j]) for j in range(values.shape[1])),
            *(pa.array(stat[chain, kept]) for stat in stats),
        ]
        finite = bool(np.isfinite(values).all()) and all(
            np.isfinite(stat[chain, kept]).all() for stat in stats if stat.dtype.kind == "f"
        )
        yield pa.RecordBatch.from_arrays(columns, schema=schema), finite


def write_parquet(path: Path, selection: Selection, layout: DrawsLayout) -> None:
    """The Parquet file, one row group per block."""
    schema = table_schema(selection, layout)
    with pq.ParquetWriter(path, schema) as writer:
        for batch, _ in table_batches(selection, layout, schema):
            writer.write_batch(batch)


def quoted(field: str) -> str:
    """A CSV field, quoted when it must be (RFC 4180)."""
    if any(c in field for c in ',"\n\r'):
        return '"' + field.replace('"', '""') + '"'
    return field


def write_csv(path: Path, selection: Selection, layout: DrawsLayout) -> None:
    """The CSV file (UTF-8), block by block. Arrow writes each double as the shortest
    decimal that reads back to it; text fields are quoted."""
    schema = table_schema(selection, layout)
    options = pcsv.WriteOptions(include_header=False, quoting_style="needed")
    with path.open("wb") as out:
        out.write((",".join(quoted(name) for name in schema.names) + "\n").encode())
        for batch, finite in table_batches(selection, layout, schema):
            sink = pa.BufferOutputStream()
            pcsv.write_csv(batch, sink, options)
            text = sink.getvalue()
            if finite:
                out.write(text)
            else:  # Arrow's nan, inf, -inf as R and pandas read them (text is quoted)
                out.write(_ARROW_NOT_FINITE.sub(lambda m: _NOT_FINITE[m[0]], text.to_pybytes()))


# ---------------------------------------------------------------------------- netCDF


def write_netcdf(path: Path, selection: Selection) -> None:
    """The netCDF file (HDF5), each variable written by blocks of draws."""
    with h5netcdf.File(path, "w") as out:
        _netcdf_group(out.create_group("posterior"), selection.posterior, selection.names)
        if selection.stat_names:
            _netcdf_group(out.create_group("sample_stats"), selection.stats, selection.stat_names)


def _netcdf_group(group: Any, data: xr.Dataset, names: list[str]) -> None:
    dims: dict[str, int] = {}
    for name in names:
        dims.update(zip(map(str, data[name].dims), data[name].shape, strict=True))
    group.dimensions = dims
    for dim in dims:
        labels = np.asarray(data[dim].values)
        _netcdf_variable(group, dim, (dim,), labels.dtype)[...] = _encoded(labels)
    for key, value in data.attrs.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            group.attrs[key] = value
    for name in names:
        variable = data[name]
        per_draw = math.prod(variable.shape) // max(1, variable.shape[1])
        step = max(1, BLOCK_VALUES // max(1, per_draw))
        target = _netcdf_variable(group, name, tuple(map(str, variable.dims)), variable.dtype)
        for start in range(0, variable.shape[1], step):
            block = variable.isel(draw=slice(start, start + step)).values
            target[:, start : start + block.shape[1], ...] = _encoded(block)


def _netcdf_variable(group: Any, name: str, dims: tuple[str, ...], dtype: np.dtype[Any]) -> Any:
    """An empty variable with xarray's encodings: booleans as int8 flagged ``dtype: bool``,
    text as variable-length strings."""
    stored: Any = dtype
    if dtype.kind == "b":
        stored = np.int8
    elif dtype.kind in "UO":
        stored = h5py.string_dtype()
    variable = group.create_variable(name, dims, dtype=stored)
    if dtype.kind == "b":
        variable.attrs["dtype"] = "bool"
    return variable


def _encoded(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "b":
        return values.astype(np.int8)
    if values.dtype.kind == "U":
        return values.astype(object)
    return values
