"""Predictions for new rows, in chunks of rows, with independent draws for every new level.

Bambi (and rstanarm) give all new levels of a factor one shared set of draws. Here each new
level of each group-level term gets its own draws from the fitted population distribution,
``b_new ~ Normal(mu, sigma)`` with ``(mu, sigma)`` taken draw by draw from the posterior
(brms' ``sample_new_levels = "gaussian"``), so two new schools are two different schools.

Memory. Every predicted row holds one value per posterior draw in several arrays at once
(linear predictor, parameters, draws, the sorted copy behind the interval...): done in one
piece, 2,000 rows at 40,000 draws took 2.9 GB. Rows are therefore predicted in chunks whose
arrays fit in :data:`CHUNK_BUDGET_BYTES`, and only each row's summary is kept. Measured on
the seed study (``score ~ (1 | school)``, 4,000 draws), 100,000 rows of ``mean``: 12.2 GB and
65 s in one piece, 91 MiB and 20 s in chunks.

Chunking changes no number of a ``mean`` prediction: every step is elementwise per row, and
a new level's draws come from a generator seeded by a digest of (request seed, factor, term,
level label), so a level named in rows of different chunks has the same draws in all of
them. Draws of new responses use one generator per chunk, seeded by (seed, chunk index).
"""

from __future__ import annotations

import gc
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import pytensor
import xarray as xr
from bambi.utils import get_aliased_name

from service.core.errors import InvalidRequest
from service.core.schemas import IntervalKind
from worker.modeling.new_levels import NewLevels
from worker.modeling.summaries import SAMPLE_DIMS, interval
from worker.patches import unseen_levels_allowed

OBS = "__obs__"

#: Bytes the arrays of one chunk may take. 64 MiB keeps a prediction's peak small next to a
#: worker's ~350 MiB at rest (and far under ``worker_recycle_rss_mb``), while a chunk still
#: holds enough values (8 M) that the fixed cost of a chunk (design matrices, xarray
#: bookkeeping, Bambi's compiled response draws) stays a small share of the time.
CHUNK_BUDGET_BYTES = 64 * 1024**2
#: Arrays of (draws x rows) alive at once in a chunk, besides those of the group-level terms
#: and response categories: the linear predictor, the parameter, the values, the interval's
#: transposed and sorted copies, the sd's temporaries, the response draws. Measured with
#: tracemalloc (peak over one chunk's values): 4-8 on gaussian and bernoulli models with
#: one or two group-level terms, for ``mean`` and ``response``.
BASE_COPIES = 8
#: Arrays per response category of an ordinal model (thresholds minus eta, its inverse
#: link, the category probabilities and their differences): a 4-category cumulative model
#: measured 20-23 arrays in all.
COPIES_PER_CATEGORY = 4
#: Rows of a prediction named in a message about them.
ROWS_NAMED = 5


def predict(
    model: bmb.Model,
    posterior: xr.Dataset,
    data: pd.DataFrame,
    *,
    kind: str,
    interval_kind: IntervalKind,
    prob: float,
    seed: int | None,
    labels: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Per-row mean, sd and interval of the expected value (``mean``) or of new responses.

    ``labels`` holds the rows' group labels as sent (before categorical coding, which turns
    levels it does not know into missing values); new levels are told apart by them.
    """
    if not len(data):  # the API refuses empty data: the caller lost the rows
        raise ValueError(
            "no rows to predict: a model that uses no column (y ~ 1) still needs "
            "a frame with the request's rows, e.g. pd.DataFrame(index=range(n))"
        )
    seed = secrets.randbelow(2**32) if seed is None else seed
    levels = NewLevels(posterior, seed)
    source = labels if labels is not None else data
    rows: list[dict[str, Any]] = []
    for index, start, stop in chunks(len(data), rows_per_chunk(model, posterior)):
        chunk = _Chunk(data.iloc[start:stop], source.iloc[start:stop], start)
        draws, status = _chunk_draws(model, posterior, chunk, kind, levels, seed, index)
        rows.extend(_summaries(draws, status, chunk.start, interval_kind, prob))
        # Bambi's response draws compile a PyTensor graph that holds the chunk's arrays in
        # reference cycles: left to the collector's own pace, 8,000 rows piled up 40 MiB.
        gc.collect(1)
    return {"kind": kind, "interval": {"kind": interval_kind, "prob": prob}, "rows": rows}


def chunks(n: int, size: int) -> Iterator[tuple[int, int, int]]:
    """``(index, start, stop)`` of each chunk of ``size`` rows among ``n``."""
    for index, start in enumerate(range(0, n, size)):
        yield index, start, min(start + size, n)


def rows_per_chunk(model: bmb.Model, posterior: xr.Dataset) -> int:
    """Rows whose arrays fit in :data:`CHUNK_BUDGET_BYTES` (at least one).

    A row costs 8 bytes per posterior draw in each of ``BASE_COPIES`` arrays, in one more per
    group-level term and one per column of it (the effect being added, new levels' draws), in
    ``COPIES_PER_CATEGORY`` per response category; and 8 bytes per design matrix column.
    """
    total_draws = posterior.sizes["chain"] * posterior.sizes["draw"]
    copies = BASE_COPIES + COPIES_PER_CATEGORY * _categories(model)
    columns = 0
    for component in model.conditional_parameters.values():
        if component.design.common is not None:
            columns += component.design.common.design_matrix.shape[1]
        for term in component.group_specific_terms.values():
            width, n_levels = _term_shape(posterior[get_aliased_name(term)])
            copies += 1 + width
            columns += width + n_levels
    row_bytes = 8 * (total_draws * copies + columns)
    return max(1, CHUNK_BUDGET_BYTES // row_bytes)


def _categories(model: bmb.Model) -> int:
    levels = getattr(model.response_term, "levels", None)
    return len(levels) if levels is not None else 0


def _term_shape(draws: xr.DataArray) -> tuple[int, int]:
    """Columns of a group-level term and levels of its factor."""
    factor_dim = _factor_dim(draws)
    width = int(
        np.prod([draws.sizes[d] for d in draws.dims if d not in (*SAMPLE_DIMS, factor_dim)])
    )
    return width, draws.sizes[factor_dim]


def _factor_dim(draws: xr.DataArray) -> Any:
    return next(d for d in draws.dims if str(d).endswith("__factor_dim"))


@dataclass
class _Chunk:
    """Some consecutive rows of a request: the data as coded, the labels as sent."""

    data: pd.DataFrame
    labels: pd.DataFrame
    start: int
    status: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = self.data.reset_index(drop=True)
        self.labels = self.labels.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.data)


def _chunk_draws(
    model: bmb.Model,
    posterior: xr.Dataset,
    chunk: _Chunk,
    kind: str,
    levels: NewLevels,
    seed: int,
    index: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draws (chain, draw, row) of the chunk's predictions, and which rows had new groups."""
    params = _parameters(model, posterior, chunk, levels)
    extended = posterior.assign(params).assign_coords({OBS: np.arange(len(chunk))})
    parent = model.family.likelihood.parent
    if kind == "mean":
        values = extended[parent]
    else:
        _refuse_infinite(params, chunk.start)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        values = _new_responses(model, extended, chunk.data, rng)
    extra = [d for d in values.dims if d not in (*SAMPLE_DIMS, OBS)]
    if extra:  # ordinal: category probabilities -> expected category position (0-based)
        (category,) = extra
        positions = xr.DataArray(np.arange(values.sizes[category]), dims=(category,))
        values = (values * positions).sum(category)
    return values.transpose(*SAMPLE_DIMS, OBS).values, chunk.status


def fitted_parameters(model: bmb.Model, posterior: xr.Dataset, data: pd.DataFrame) -> xr.Dataset:
    """The posterior with each draw's response distribution parameters on the rows of
    ``data`` (dimension ``__obs__``): rows like those the model was fitted on, whose levels
    are all seen, as Bambi's ``family.log_likelihood`` expects them."""
    chunk = _Chunk(data, data, 0)
    params = _parameters(model, posterior, chunk, NewLevels(posterior, 0))
    return posterior.assign(params).assign_coords({OBS: np.arange(len(chunk))})


def _parameters(
    model: bmb.Model, posterior: xr.Dataset, chunk: _Chunk, levels: NewLevels
) -> dict[str, xr.DataArray]:
    """Draws (chain, draw, row) of every distribution parameter on the chunk's rows."""
    params: dict[str, xr.DataArray] = {}
    for name, component in model.conditional_parameters.items():
        eta = _linear_predictor(component, posterior, chunk, levels)
        params[component.alias or name] = _response_scale(model, name, eta, posterior)
    return params


def _new_responses(
    model: bmb.Model, extended: xr.Dataset, data: pd.DataFrame, rng: np.random.Generator
) -> xr.DataArray:
    """Draws of new responses given each posterior draw of the parameters."""
    # Bambi evaluates the whole response term on the new data (``p(y, n)`` needs ``y``):
    # a placeholder fills response columns that new rows cannot have.
    placeholders = {v: 0 for v in model.response_term.term.var_names if v not in data}
    # Bambi draws through a PyTensor function compiled for this call; with the default
    # (numba) mode that compilation alone takes most of a second, while the Python
    # implementations of the random variables are numpy calls that draw just as fast.
    try:
        with pytensor.config.change_flags(mode="FAST_COMPILE"):  # type: ignore[attr-defined]
            values: xr.DataArray = model.family.posterior_predictive(
                model, extended, random_seed=rng, data=data.assign(**placeholders)
            )
    except ValueError as exc:  # numpy refuses e.g. a Poisson rate beyond 1e19
        raise InvalidRequest.one(
            "data", "new responses cannot be drawn: a predicted parameter is out of range"
        ) from exc
    return values


def _refuse_infinite(params: dict[str, xr.DataArray], start: int) -> None:
    """A 422 naming the first rows where a predicted parameter is not a finite number."""
    for values in params.values():
        finite = np.isfinite(values.values)
        if not finite.all():
            other = tuple(i for i, d in enumerate(values.dims) if d != OBS)
            _refuse_rows(start + np.flatnonzero(~finite.all(axis=other)))


def _refuse_rows(bad: np.ndarray) -> None:
    named = ", ".join(str(int(i)) for i in bad[:ROWS_NAMED])
    more = " and more" if bad.size > ROWS_NAMED else ""
    raise InvalidRequest.one(
        "data",
        f"the prediction is not a finite number for rows {named}{more} (0-based); a predictor "
        "value there is probably too large or too small for the model",
    )


def _summaries(
    draws: np.ndarray,
    status: dict[str, np.ndarray],
    start: int,
    interval_kind: IntervalKind,
    prob: float,
) -> list[dict[str, Any]]:
    """Each row's mean, sd and interval, and whether each of its groups was seen.

    Each row's draws are laid out contiguously first: numpy sums along a contiguous axis in
    an order set by that axis alone, while summing across rows (as ``mcmc_stats`` does on
    ``(chain, draw, row)``) takes an order that changes with the number of rows, and so
    with the chunk: the last digit of an sd did.
    """
    by_row = np.ascontiguousarray(draws.reshape(-1, draws.shape[2]).T)  # (row, draw)
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite rows are refused below
        lower, upper = interval(by_row.T[None], interval_kind, prob)  # views: no copy
        stats = np.stack([by_row.mean(axis=1), by_row.std(axis=1, ddof=1), lower, upper])
    finite = np.isfinite(stats).all(axis=0)
    if not finite.all():
        _refuse_rows(start + np.flatnonzero(~finite))
    groups = {f: np.where(new, "new", "seen").tolist() for f, new in status.items()}
    return [
        {
            "row": start + i,
            "mean": m,
            "sd": s,
            "lower": lo,
            "upper": up,
            "groups": {f: labels[i] for f, labels in groups.items()},
        }
        for i, (m, s, lo, up) in enumerate(stats.T.tolist())
    ]


def _response_scale(
    model: bmb.Model, name: str, eta: xr.DataArray, posterior: xr.Dataset
) -> xr.DataArray:
    """Apply the family's inverse link and special cases, as Bambi's own predict does."""
    family = model.family
    if hasattr(family, "transform_linear_predictor"):
        eta = family.transform_linear_predictor(model, eta, posterior)
    linkinv = family.link[name].linkinv
    kwargs = getattr(family, "INVLINK_KWARGS", {})
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are refused later
        values: xr.DataArray = xr.apply_ufunc(linkinv, eta, kwargs=kwargs)
    if hasattr(family, "transform_coords"):
        values = family.transform_coords(model, values)
    if hasattr(family, "transform_mean"):
        values = family.transform_mean(model, values)
    return values


def _linear_predictor(
    component: Any, posterior: xr.Dataset, chunk: _Chunk, levels: NewLevels
) -> xr.DataArray:
    """Draws (chain, draw, row) of one component's linear predictor on the chunk's rows."""
    n = len(chunk)
    eta = np.zeros((posterior.sizes["chain"], posterior.sizes["draw"], n))
    if component.design.common is not None:
        _add_common(component, posterior, chunk.data, eta)
    for term in component.group_specific_terms.values():
        factor, new = _add_group_term(term, posterior, chunk, levels, eta)
        chunk.status[factor] = chunk.status.get(factor, np.zeros(n, dtype=bool)) | new
    return xr.DataArray(eta, dims=(*SAMPLE_DIMS, OBS))


def _add_common(component: Any, posterior: xr.Dataset, data: pd.DataFrame, eta: np.ndarray) -> None:
    """Add the common terms and offsets to ``eta``, one design column at a time.

    Bambi's ``predict_common`` takes a matrix product, whose rounding may depend on the
    number of rows; column by column every row gets the same sums in any chunk. Each term
    is evaluated on its own: the design's ``slices`` still count an intercept that Bambi
    removed (ordinal models), so they can point past the columns.
    """
    try:
        blocks = {
            name: np.asarray(term.eval_new_data(data), dtype=float).reshape(len(data), -1)
            for name, term in component.design.common.terms.items()
        }
    except Exception as exc:
        raise InvalidRequest.one(
            "data", "the new data does not fit the model's predictors (unseen category?)"
        ) from exc
    terms = list(component.common_terms.values())
    if component.intercept_term is not None:
        terms.insert(0, component.intercept_term)
    for term in terms:  # blocks are named as in the formula ("x", not "sigma_x")
        columns = blocks[term.term.name]
        beta = posterior[get_aliased_name(term)].transpose(*SAMPLE_DIMS, ...).values
        beta = beta.reshape(*beta.shape[:2], -1)
        for j in range(columns.shape[1]):
            eta += beta[:, :, j, None] * columns[:, j]
    for term in component.offset_terms.values():
        eta += blocks[term.term.name].sum(axis=1)


def _add_group_term(
    term: Any, posterior: xr.Dataset, chunk: _Chunk, levels: NewLevels, eta: np.ndarray
) -> tuple[str, np.ndarray]:
    """Add one group-level term to ``eta``, new levels drawn each on its own; the factor and
    which rows have a new level of it."""
    name = get_aliased_name(term)
    factor = term.name.split("|", 1)[1]
    x, membership = _group_design(term, chunk.data)
    seen = membership.any(axis=1)
    index = membership.argmax(axis=1)
    draws = posterior[name]
    b = draws.transpose(*SAMPLE_DIMS, _factor_dim(draws), ...).values
    b = b.reshape(*b.shape[:3], -1)  # (chain, draw, level, k)
    new_rows = np.flatnonzero(~seen)
    fresh, which = levels.for_rows(term, factor, chunk.labels, new_rows, b.shape[3])
    for j in range(b.shape[3]):
        effect = np.take(b[..., j], index, axis=2)
        if new_rows.size:
            effect[:, :, new_rows] = fresh[:, :, which, j]
        effect *= x[:, j]
        eta += effect
    return factor, ~seen


def _group_design(term: Any, data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The term's columns (row, k) and level indicators (row, level); no level: new."""
    formula_term = term.term
    try:
        with unseen_levels_allowed():
            x = np.asarray(formula_term.expr.eval_new_data(data), dtype=float)
            membership = np.asarray(formula_term.factor.eval_new_data(data))
    except Exception as exc:
        raise InvalidRequest.one(
            "data", f"the new data does not fit the group term '{get_aliased_name(term)}'"
        ) from exc
    return x.reshape(len(data), -1), membership.reshape(len(data), -1)
