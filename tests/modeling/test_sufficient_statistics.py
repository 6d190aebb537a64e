"""Gaussian models sample a likelihood built from sufficient statistics, and it is Bambi's.

The collapsed model must have exactly the log density (and gradient) of Bambi's own model
at every point, for every shape of linear predictor it accepts; every model it does not
recognise must be left row-wise.
"""

from __future__ import annotations

from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import pytest
from pymc.model.fgraph import fgraph_from_model

from worker.modeling.compiled import lift
from worker.modeling.sufficient_statistics import POTENTIAL_NAME, collapse

ROWS, LEVELS = 240, 16


def data(seed: int = 0, rows: int = ROWS, level: float = 0.0) -> pd.DataFrame:
    """Grouped data with a numeric and a categorical predictor, and an offset column."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, LEVELS, rows)
    x = rng.normal(size=rows)
    a = rng.choice(["lo", "mid", "hi"], rows)
    y = level + 1 + 0.5 * x + rng.normal(0, 0.7, LEVELS)[g] + rng.normal(size=rows)
    return pd.DataFrame(
        {
            "y": y,
            "x": x,
            "a": a,
            "g": [f"g{i}" for i in g],
            "h": rng.integers(0, 4, rows),
            "w": rng.uniform(0.5, 1.5, rows),
        }
    )


COLLAPSED = [
    "y ~ 1",
    "y ~ x",
    "y ~ (1 | g)",
    "y ~ x + (1 | g)",
    "y ~ x + (1 + x | g)",
    "y ~ 0 + x + (1 | g)",
    "y ~ a + x",
    "y ~ x + (a | g)",
    "y ~ 0 + a + (0 + x | g)",
    "y ~ x + offset(w) + (1 | g)",
]


def log_densities(model: Any, points: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The log density and its gradient (by variable name) at each point."""
    by_name = sorted(model.free_RVs, key=lambda rv: rv.name)
    fast = {"mode": "FAST_COMPILE"}
    logp, dlogp = model.compile_logp(**fast), model.compile_dlogp(vars=by_name, **fast)
    return np.array([[logp(p), *dlogp(p)] for p in points])


def random_points(model: Any, count: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    start = model.initial_point()
    return [
        {name: value + rng.normal(0, 0.5, np.shape(value)) for name, value in start.items()}
        for _ in range(count)
    ]


@pytest.mark.parametrize("noncentered", [True, False])
@pytest.mark.parametrize("formula", COLLAPSED)
def test_the_collapsed_likelihood_is_bambis_at_every_point(formula: str, noncentered: bool) -> None:
    model = bmb.Model(formula, data(), noncentered=noncentered)
    model.build()
    lifted = lift(model)
    assert [p.name for p in lifted.model.potentials] == [POTENTIAL_NAME]
    assert not lifted.model.observed_RVs
    assert all(ROWS not in value.shape for value in lifted.inputs.values()), (
        "no input runs over the rows"
    )
    points = random_points(model.backend.model)
    np.testing.assert_allclose(
        log_densities(lifted.model, points),
        log_densities(model.backend.model, points),
        rtol=1e-9,
        atol=1e-9,
    )


def test_the_sums_lose_no_precision_far_from_zero() -> None:
    """A response around 10,000 with unit noise: the sums are taken around the least-squares
    fit of the common terms, so the gradient still matches the row-wise one."""
    model = bmb.Model("y ~ x + (1 | g)", data(level=1e4))
    model.build()
    lifted = lift(model)
    points = random_points(model.backend.model)
    np.testing.assert_allclose(
        log_densities(lifted.model, points),
        log_densities(model.backend.model, points),
        rtol=1e-9,
    )


@pytest.mark.parametrize(
    ("formula", "family", "reason"),
    [
        ("y ~ x + (1 | g) + (1 | h)", "gaussian", "more than one grouping factor"),
        ("y ~ x + (1 | g)", "t", "not a gaussian model"),
        ("y ~ x + (1 | g)", "bernoulli", "not a gaussian model"),
    ],
)
def test_other_models_keep_their_row_wise_likelihood(
    formula: str, family: str, reason: str
) -> None:
    frame = data()
    if family == "bernoulli":
        frame["y"] = (frame["y"] > frame["y"].median()).astype(int)
    model = bmb.Model(formula, frame, family=family)
    model.build()
    graph, _ = fgraph_from_model(model.backend.model, inlined_views=True)
    assert reason in (collapse(graph, model) or "")
    assert [rv.name for rv in lift(model).model.observed_RVs] == ["y"]


def test_a_distributional_sigma_keeps_the_row_wise_likelihood() -> None:
    model = bmb.Model(bmb.Formula("y ~ x + (1 | g)", "sigma ~ x"), data())
    model.build()
    graph, _ = fgraph_from_model(model.backend.model, inlined_views=True)
    assert collapse(graph, model) == "sigma varies by row"


def test_the_number_of_rows_is_not_part_of_a_collapsed_structure() -> None:
    def key(frame: pd.DataFrame, family: str = "gaussian") -> str:
        model = bmb.Model("y ~ x + (1 | g)", frame, family=family)
        model.build()
        return lift(model).key

    assert key(data(rows=ROWS)) == key(data(seed=2, rows=2 * ROWS))
    assert key(data(rows=ROWS), "t") != key(data(seed=2, rows=2 * ROWS), "t"), (
        "row-wise likelihoods compile their row count in"
    )
