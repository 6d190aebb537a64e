"""The formulas of a fit request, checked: the main one and each distributional one.

Each is checked by ``service.core.formula`` (the same check the worker runs again before
Bambi sees the text) and kept with its terms, which the design-size estimate and the prior
check read. The response is no predictor of a distributional formula, and a binomial
response is written ``p(successes, trials)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.errors import InvalidRequest
from service.core.families import Family
from service.core.formula import FormulaInfo, check_formula, formula_terms
from service.core.schemas import FitRequest, Scalar
from service.core.settings import Settings


@dataclass
class CheckedFormula:
    """One checked formula of a request: the main one or a distributional one."""

    field: str  # formula | distributional.<parameter>
    text: str
    info: FormulaInfo
    terms: list[Any]  # formulae's terms
    prefix: str = ""  # Bambi's prefix of the term names: "" or "<parameter>_"

    @property
    def term_names(self) -> list[str]:
        return [f"{self.prefix}{term.name}" for term in self.terms]


def check_formulas(
    request: FitRequest, fam: Family, columns: Mapping[str, Sequence[Scalar]], settings: Settings
) -> list[CheckedFormula]:
    """The main formula and each distributional one, checked; the response is no predictor."""
    info = check_formula(request.formula, columns, max_length=settings.max_formula_length)
    _check_binomial_form(fam, info)
    formulas = [CheckedFormula("formula", request.formula, info, formula_terms(request.formula))]
    for parameter, rhs in request.distributional.items():
        field = f"distributional.{parameter}"
        if parameter not in fam.auxiliary:
            raise InvalidRequest.one(
                field, f"{fam.name} has no auxiliary parameter '{parameter[:40]}'"
            )
        text = f"{parameter} ~ {rhs}"
        extra = check_formula(
            text,
            columns,
            max_length=settings.max_formula_length,
            field_name=field,
            parameter=parameter,
        )
        if info.response in extra.predictors:
            raise InvalidRequest.one(
                field, f"the response '{info.response[:40]}' cannot also be a predictor"
            )
        terms = formula_terms(text, field_name=field)
        formulas.append(CheckedFormula(field, text, extra, terms, prefix=f"{parameter}_"))
    return formulas


def _check_binomial_form(fam: Family, info: FormulaInfo) -> None:
    if fam.response == "binomial" and info.trials is None:
        raise InvalidRequest.one(
            "formula", "a binomial response is written 'p(successes, trials) ~ ...'"
        )
    if fam.response != "binomial" and info.trials is not None:
        raise InvalidRequest.one("formula", "'p(successes, trials)' is for the binomial family")
