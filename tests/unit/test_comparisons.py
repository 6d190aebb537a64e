"""Fits compared by LOO must be of the same response on the same rows; otherwise the
comparison is refused with the reason (a ranking of different data would be silently
wrong)."""

from __future__ import annotations

from typing import Any

import pytest

from service.api.validation import check_comparable, check_comparison_cost
from service.core.errors import InvalidRequest
from service.core.schemas import FitSpec, ResolvedSampler

SAMPLER = ResolvedSampler(draws=10, tune=10, chains=1, seed=1, target_accept=0.8, method="nutpie")
COLUMNS: dict[str, list[Any]] = {"y": [1.0, 2.0, 3.0], "x": [0.1, 0.2, 0.3], "g": ["a", "b", "a"]}


def spec(formula: str, columns: dict[str, list[Any]] | None = None, **extra: Any) -> FitSpec:
    return FitSpec(
        formula=formula,
        family="gaussian",
        link="identity",
        columns=columns or COLUMNS,
        sampler=SAMPLER,
        **extra,
    )


def test_models_of_the_same_response_and_rows_compare() -> None:
    check_comparable({"a": spec("y ~ 1"), "b": spec("y~x + (1|g)"), "c": spec("y ~ 0 + C(g)")})


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        (spec("log(y) ~ x"), "models 'log(y)'"),
        (spec("x ~ y"), "models 'x'"),
        (spec("y ~ 1", {**COLUMNS, "y": [1.0, 2.0, 3.5]}), "different data"),
        (spec("y ~ 1", dropped_rows=[3], n_dropped=1), "different data"),
    ],
)
def test_other_responses_or_rows_are_refused_with_the_reason(other: FitSpec, reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_comparable({"first": spec("y ~ x"), "second": other})
    (error,) = refused.value.errors
    assert error.field == "fit_ids"
    assert reason in error.message and "second" in error.message


def test_a_comparison_computes_at_most_one_large_fits_loo_in_its_call() -> None:
    """Fits whose LOO is stored cost nothing; the rest must fit in one worker call."""
    check_comparison_cost({"a": 100_000 * 4000})
    with pytest.raises(InvalidRequest) as refused:
        check_comparison_cost({"a": 100_000 * 4000, "b": 50_000 * 4000})
    (error,) = refused.value.errors
    assert error.field == "fit_ids" and "a, b" in error.message and "/loo" in error.message
