"""Column names that clash with the names Bambi, PyMC and ArviZ give a model's own variables,
dimensions and coordinates break the model (Bambi 0.21): the term merges with another one,
the build fails, or the slope vanishes from the draws. ``formula.check_names`` refuses every
such name before anything is queued; names that cannot clash build and are accepted."""

from __future__ import annotations

from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import pymc as pm
import pytest
from bambi.defaults import get_builtin_family

from service.core.errors import InvalidRequest
from service.core.families import FAMILIES
from service.core.formula import RESERVED_NAMES, check_formula, check_names

N = 40


def data(**extra: Any) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    columns = {
        "y": rng.normal(size=N),
        "x": rng.normal(size=N),
        "s": rng.choice(["a", "b", "c"], N),
        "g": rng.choice(["u", "v", "w", "z"], N),
    }
    return pd.DataFrame(columns | {name: rng.normal(size=N) for name in extra})


def model(formula: str, column: str, *extra: str, family: str = "gaussian") -> bmb.Model:
    built = bmb.Model(bmb.Formula(formula, *extra), data(**{column: None}), family=family)
    built.build()
    return built


def refused(formula: str, column: str, *extra: str) -> bool:
    """Whether the service refuses ``column`` in this model."""
    used = check_formula(formula, set(data(**{column: None}))).variables
    parameters = {formula.split("~")[0].strip() for formula in extra}
    try:
        check_names(used, distributional=parameters)
    except InvalidRequest as refusal:
        return any(error.field == f"data.{column}" for error in refusal.errors)
    return False


@pytest.mark.parametrize(
    ("column", "formula", "terms"),
    [
        ("Intercept", "y ~ x + Intercept", {"Intercept", "x"}),
        ("1|g", "y ~ x + `1|g` + (1 | g)", {"Intercept", "x", "1|g"}),
        ("I(x)", "y ~ I(x) + `I(x)`", {"Intercept", "I(x)"}),
        ("x:s", "y ~ x * s + `x:s`", {"Intercept", "x", "s", "x:s"}),
        ("1", "y ~ (1 | g) + (`1` | g)", {"Intercept", "1|g"}),
    ],
)
def test_a_column_named_like_a_term_merges_with_it(
    column: str, formula: str, terms: set[str]
) -> None:
    built = model(formula, column)
    assert set(built.components["mu"].terms) == terms  # one term fewer than written
    assert refused(formula, column)


@pytest.mark.parametrize(
    ("column", "formula", "extra", "family"),
    [
        ("sigma", "y ~ x + sigma", (), "gaussian"),
        ("mu", "y ~ x + mu", (), "gaussian"),
        ("nu", "y ~ x + nu", (), "t"),
        ("1|g_sigma", "y ~ x + `1|g_sigma` + (1 | g)", (), "gaussian"),
        ("s_dim", "y ~ s + s_dim", (), "gaussian"),
        ("g__factor_dim", "y ~ x + g__factor_dim + (1 | g)", (), "gaussian"),
        ("sigma_x", "y ~ sigma_x", ("sigma ~ x",), "gaussian"),
    ],
)
def test_a_column_named_like_a_model_variable_or_dimension_fails_the_build(
    column: str, formula: str, extra: tuple[str, ...], family: str
) -> None:
    with pytest.raises(ValueError, match=r"already exists|conflicts with"):
        model(formula, column, *extra, family=family)
    assert refused(formula, column, *extra)


@pytest.mark.parametrize("column", ["chain", "draw"])
def test_a_slope_named_like_a_dimension_of_the_draws_vanishes_from_them(column: str) -> None:
    built = model(f"y ~ x + {column}", column)
    assert column in built.components["mu"].terms
    with built.backend.model:
        draws = pm.sample_prior_predictive(draws=5, random_seed=1)
    assert column not in draws.prior.data_vars  # the coordinate took its place
    assert refused(f"y ~ x + {column}", column)


@pytest.mark.parametrize("column", ["log", "x_sigma", "size_dim", "y_obs", "sample"])
def test_names_that_cannot_clash_build_a_term_of_their_own(column: str) -> None:
    formula = f"y ~ x + {column}"
    assert column in model(formula, column).components["mu"].terms
    assert not refused(formula, column)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_parameter_of_every_family_offered_is_reserved(name: str) -> None:
    assert set(get_builtin_family(name).likelihood.params) <= RESERVED_NAMES
