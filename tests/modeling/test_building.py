"""Building a Bambi model from a validated spec keeps memory proportional to the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
from formulae.categorical import Treatment
from scipy import sparse

from service.core.schemas import FitSpec, ResolvedSampler
from worker.modeling.building import as_sparse, build_model
from worker.modeling.prediction import predict
from worker.modeling.sampling import sample

ORIGINAL_ENCODING = Treatment.code_with_intercept
SAMPLER = ResolvedSampler(draws=100, tune=100, chains=2, seed=5, target_accept=0.8, method="nutpie")


def spec(groups: int = 300, per_group: int = 10) -> FitSpec:
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(groups), per_group)
    x = rng.normal(size=g.size)
    y = 2 + 0.5 * x + rng.normal(0, 1, groups)[g] + rng.normal(0, 0.5, g.size)
    columns = {"y": y.tolist(), "x": x.tolist(), "g": [f"g{i}" for i in g]}
    return FitSpec(
        formula="y ~ x + (1 + x | g)",
        family="gaussian",
        link="identity",
        columns=columns,
        sampler=SAMPLER,
    )


def test_grouping_factors_are_held_sparse_and_the_model_fits_and_predicts() -> None:
    model = build_model(spec())
    for term in model.components["mu"].group_specific_terms.values():
        indicators = term.term.factor.data
        assert sparse.issparse(indicators) and indicators.shape == (3000, 300)
        assert indicators.nnz == 3000  # one level per row, not rows x levels floats
        assert indicators.dtype == np.int8  # built with one byte per entry
    assert Treatment.code_with_intercept is ORIGINAL_ENCODING, "formulae is left as it was"
    result = sample(model, SAMPLER, lambda _: None)
    new = pd.DataFrame({"x": [0.0, 1.0, 0.0], "g": ["g0", "g1", "a new group"]})
    rows = predict(
        model, result.posterior, new, kind="mean", interval_kind="hdi", prob=0.9, seed=1
    )["rows"]
    assert [r["groups"]["g"] for r in rows] == ["seen", "seen", "new"]
    assert all(np.isfinite([r["mean"], r["lower"], r["upper"]]).all() for r in rows)
    assert rows[2]["upper"] - rows[2]["lower"] > rows[0]["upper"] - rows[0]["lower"]


def test_dense_matrices_become_the_same_sparse_matrices() -> None:
    rng = np.random.default_rng(0)
    indicators = np.eye(5)[rng.integers(0, 5, 40)] * rng.normal(size=(40, 1))
    indicators[3] = 0.0  # a row with no entry
    several = indicators.copy()
    several[7, :2] = [1.5, -2.0]  # a row with two entries: scipy's general path
    for dense in (indicators, several):
        converted = as_sparse(dense)
        assert isinstance(converted, sparse.csr_matrix)
        assert converted.nnz == np.count_nonzero(dense)
        np.testing.assert_array_equal(converted.toarray(), dense)


def test_formula_calls_resolve_to_their_functions_whatever_the_worker_defines() -> None:
    import worker.modeling.building as building

    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    w = rng.uniform(0.5, 3.0, size=40)
    columns = {"y": rng.normal(size=40).tolist(), "x": x.tolist(), "w": w.tolist()}
    expected = {
        "log(w)": np.log(w),
        "log2(w)": np.log2(w),
        "log10(w)": np.log10(w),
        "exp(x)": np.exp(x),
        "sqrt(w)": np.sqrt(w),
        "abs(x)": np.abs(x),
        "I(x ** 2)": x**2,
        "center(x)": x - x.mean(),
    }
    formula = "y ~ " + " + ".join(expected)
    sampler = SAMPLER
    # names the worker's own modules might define must not shadow a formula's functions
    shadows = {name.split("(")[0] for name in expected}
    saved = {name: getattr(building, name) for name in shadows if hasattr(building, name)}
    for name in shadows:
        setattr(building, name, "not a function")
    try:
        model = build_model(
            FitSpec(formula=formula, family="gaussian", link="identity", columns=columns,
                    sampler=sampler)
        )  # fmt: skip
    finally:
        for name in shadows:
            delattr(building, name)
        for name, value in saved.items():
            setattr(building, name, value)
    design = model.components["mu"].design.common
    for term, values in expected.items():
        np.testing.assert_allclose(np.asarray(design[term]).ravel(), values, rtol=1e-12)
