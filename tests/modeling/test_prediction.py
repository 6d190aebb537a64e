"""Predictions come in chunks of rows: bounded memory, the same numbers, new levels intact.

The fits are tiny (2 chains x 150 draws) and shared by the tests; the memory test predicts
from their posterior resampled to 4 chains x 2,000 draws.
"""

from __future__ import annotations

import tracemalloc
from functools import cache
from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from service.core.errors import InvalidRequest
from service.core.schemas import FitSpec, ResolvedSampler, Scalar
from worker.modeling import prediction
from worker.modeling.building import build_model, frame
from worker.modeling.prediction import predict, rows_per_chunk
from worker.modeling.sampling import sample

SAMPLER = ResolvedSampler(draws=150, tune=150, chains=2, seed=3, target_accept=0.8, method="nutpie")
SLOPES = "y ~ x + (1 + x | g)"
Fit = tuple[FitSpec, bmb.Model, xr.Dataset]
Columns = dict[str, list[Scalar]]


def training_columns() -> dict[str, list[Any]]:
    """96 rows in 8 groups: a gaussian ``y`` and a count, both rising with ``x``."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 12)
    x = rng.normal(size=g.size)
    y = 1 + 0.5 * x + rng.normal(0, 0.7, 8)[g] + rng.normal(size=g.size)
    count = rng.poisson(np.exp(0.3 + 0.4 * x))
    return {"y": y.tolist(), "x": x.tolist(), "g": [f"g{i}" for i in g], "count": count.tolist()}


@cache
def fitted(formula: str, family: str = "gaussian", link: str = "identity") -> Fit:
    spec = FitSpec(
        formula=formula, family=family, link=link, columns=training_columns(), sampler=SAMPLER
    )
    model = build_model(spec)
    return spec, model, sample(model, SAMPLER, lambda _: None).posterior


def rows_of(fit: Fit, new: Columns | int, **options: Any) -> list[dict[str, Any]]:
    """Predicted rows for ``new`` columns, or for ``new`` rows of no column (what a model
    that uses no column, ``y ~ 1``, is given)."""
    spec, model, posterior = fit
    if isinstance(new, int):
        data = labels = pd.DataFrame(index=range(new))
    else:
        data, labels = frame(new, spec), frame(new)
    settings: dict[str, Any] = {"kind": "mean", "interval_kind": "hdi", "prob": 0.9, "seed": 7}
    body = predict(model, posterior, data, labels=labels, **(settings | options))
    rows: list[dict[str, Any]] = body["rows"]
    return rows


def numbers(row: dict[str, Any]) -> tuple[float, ...]:
    return row["mean"], row["sd"], row["lower"], row["upper"]


@pytest.fixture
def one_row_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk holds a single row."""
    monkeypatch.setattr(prediction, "CHUNK_BUDGET_BYTES", 1)


def test_predictions_of_the_mean_are_the_same_numbers_in_one_chunk_or_one_row_per_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fit = fitted(SLOPES)
    new: Columns = {
        "x": [0.0, 1.5, -2.0, 0.3, 0.3, 4.0, -1.0],
        "g": ["g0", "g5", "new 1", "new 2", "new 1", "g7", "new 2"],
    }
    monkeypatch.setattr(prediction, "CHUNK_BUDGET_BYTES", 2**40)
    whole = rows_of(fit, new)
    monkeypatch.setattr(prediction, "CHUNK_BUDGET_BYTES", 1)
    assert rows_per_chunk(fit[1], fit[2]) == 1
    assert rows_of(fit, new) == whole
    assert [r["groups"]["g"] for r in whole] == ["seen", "seen", "new", "new", "new", "seen", "new"]


@pytest.mark.usefixtures("one_row_chunks")
def test_a_new_level_has_the_same_draws_in_every_chunk_and_other_new_levels_their_own() -> None:
    fit = fitted(SLOPES)
    a, b, a_again = rows_of(fit, {"x": [0.5, 0.5, 0.5], "g": ["new A", "new B", "new A"]})
    assert numbers(a) == numbers(a_again)  # rows 0 and 2: two chunks, one school
    assert a["mean"] != b["mean"] and a["sd"] != b["sd"]


def test_a_new_levels_draws_depend_on_the_seed_and_its_label_not_on_the_other_rows() -> None:
    fit = fitted(SLOPES)
    (alone,) = rows_of(fit, {"x": [1.0], "g": ["new A"]})
    *_, among_others = rows_of(fit, {"x": [0.0, 2.0, 1.0], "g": ["new C", "new B", "new A"]})
    assert numbers(alone) == numbers(among_others)
    (other_seed,) = rows_of(fit, {"x": [1.0], "g": ["new A"]}, seed=8)
    assert other_seed["mean"] != alone["mean"]


def test_seeded_new_responses_are_drawn_again_alike_and_each_chunk_draws_its_own(
    one_row_chunks: None,
) -> None:
    fit = fitted(SLOPES)
    new: Columns = {"x": [0.2, 0.2, 0.2], "g": ["g1", "g1", "new A"]}
    first = rows_of(fit, new, kind="response", seed=11)
    assert rows_of(fit, new, kind="response", seed=11) == first
    assert numbers(first[0]) != numbers(first[1])  # the same row in two chunks: new draws
    assert rows_of(fit, new, kind="response", seed=12) != first


@pytest.mark.parametrize(
    ("formula", "family", "link", "new"),
    [
        ("y ~ 1", "gaussian", "identity", 5),
        ("y ~ 1 + (1 | g)", "gaussian", "identity", {"g": ["g0", "g0", "new", "g3", "new"]}),
        ("count ~ 0 + x", "poisson", "log", {"x": [0.0, 0.5, 1.0, -1.0, 2.0]}),
    ],
)
@pytest.mark.usefixtures("one_row_chunks")
def test_intercept_only_and_slope_only_models_predict_every_row(
    formula: str, family: str, link: str, new: Columns | int
) -> None:
    fit = fitted(formula, family, link)
    for kind in ("mean", "response"):
        rows = rows_of(fit, new, kind=kind)
        assert [r["row"] for r in rows] == list(range(5))
        assert all(np.isfinite(numbers(r)).all() and r["lower"] <= r["upper"] for r in rows)
    means = [r["mean"] for r in rows_of(fit, new)]
    if formula == "y ~ 1":
        assert len(set(means)) == 1 and rows_of(fit, 1)[0]["groups"] == {}
    elif formula == "count ~ 0 + x":
        assert means[0] == 1.0  # exp(0 * beta): no intercept
    else:
        assert means[0] == means[1] and means[2] == means[4] != means[0]


@pytest.mark.parametrize("kind", ["mean", "response"])
def test_a_prediction_that_is_not_a_finite_number_is_refused_naming_its_rows(kind: str) -> None:
    fit = fitted("count ~ 0 + x", "poisson", "log")
    with pytest.raises(InvalidRequest) as caught:
        rows_of(fit, {"x": [1.0, 5000.0, 2.0, 9000.0]}, kind=kind)
    (error,) = caught.value.errors
    assert error.field == "data"
    assert "rows 1, 3 " in error.message


def test_the_peak_memory_of_a_prediction_is_bounded_by_the_chunk_budget() -> None:
    spec, model, small = fitted("y ~ 1 + (1 | g)")
    picks = np.random.default_rng(0).integers(0, small.sizes["draw"], (4, 2000))
    posterior = xr.concat(
        [small.isel(chain=c % 2, draw=picks[c]).drop_vars(["chain", "draw"]) for c in range(4)],
        dim="chain",
    )
    rows = 5000
    new: Columns = {"g": [f"g{i % 8}" if i % 2 else f"new {i % 50}" for i in range(rows)]}
    data, labels = frame(new, spec), frame(new)
    one_piece = rows * 4 * 2000 * 8  # bytes of a single (draw x row) array: 305 MiB
    assert rows_per_chunk(model, posterior) < rows // 4
    tracemalloc.start()
    try:
        options: dict[str, Any] = {"kind": "mean", "interval_kind": "hdi", "prob": 0.9, "seed": 1}
        body = predict(model, posterior, data, labels=labels, **options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(body["rows"]) == rows
    assert peak < prediction.CHUNK_BUDGET_BYTES + 16 * 1024**2 < one_piece / 3
