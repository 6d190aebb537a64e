"""The size of the design Bambi would build, estimated before any model exists.

A fit's memory is dominated by its dense design matrix: rows x (common columns +
group-level columns) floats. The estimate counts, from the request's terms and the data's
levels, the columns every term would take, and refuses a design over ``max_design_bytes``,
a grouping factor or a term's categorical with too many levels, or too many grouping
factors, saying the estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.api.validation.formulas import CheckedFormula
from service.core.errors import InvalidRequest
from service.core.schemas import Scalar
from service.core.settings import Settings


def check_design(
    formulas: Sequence[CheckedFormula],
    columns: Mapping[str, Sequence[Scalar]],
    categorical: Mapping[str, list[Scalar] | None],
    settings: Settings,
) -> None:
    """Limits on grouping factors and categoricals (in every formula), and the size of the
    dense design Bambi would build: rows x (common columns + group-level columns).

    A common term is one column per combination of the levels of its categoricals (an
    interaction multiplies them, a number is one column); a group term is its expression's
    columns times its factor's levels. Counting every categorical at full rank bounds what
    formulae builds from above.
    """
    levels = _Levels(columns, categorical, settings)
    common = group = 0
    factors: set[tuple[str, ...]] = set()
    for formula in formulas:
        for term in formula.terms:
            if hasattr(term, "factor"):  # a group-specific term: expr | factor
                factor = tuple(str(c.name) for c in term.factor.components)
                factors.add(factor)
                width = levels.width(term.expr, formula.field)
                group += width * levels.factor(factor, formula.field)
            else:
                common += levels.width(term, formula.field)
    if len(factors) > settings.max_group_factors:
        raise InvalidRequest.one(
            "formula",
            f"{len(factors)} grouping factors; the limit is {settings.max_group_factors}",
        )
    n_rows = len(next(iter(columns.values())))
    if n_rows * group * 8 > settings.max_design_bytes:
        raise InvalidRequest.one(
            "formula",
            f"the group-level design would take about {_mib(n_rows * group * 8)} "
            f"({n_rows} rows x {group} columns); the limit is "
            f"{_mib(settings.max_design_bytes)}",
        )
    size = n_rows * (common + group) * 8
    if size > settings.max_design_bytes:
        raise InvalidRequest.one(
            "formula",
            f"the design would take about {_mib(size)} ({n_rows} rows x {common} common and "
            f"{group} group-level columns); the limit is {_mib(settings.max_design_bytes)}",
        )


class _Levels:
    """Levels of categoricals and factors in the data, and the columns of terms."""

    def __init__(
        self,
        columns: Mapping[str, Sequence[Scalar]],
        declared: Mapping[str, list[Scalar] | None],
        settings: Settings,
    ) -> None:
        self.columns = columns
        self.declared = declared
        self.settings = settings
        self.counts: dict[tuple[str, ...], int] = {}

    def count(self, names: tuple[str, ...]) -> int:
        if names not in self.counts:
            listed = self.declared.get(names[0]) if len(names) == 1 else None
            if listed is not None:
                self.counts[names] = len(listed)
            else:
                values = (self.columns[name] for name in names)
                self.counts[names] = len(set(zip(*values, strict=True)))
        return self.counts[names]

    def factor(self, names: tuple[str, ...], field: str) -> int:
        """Levels of a grouping factor (one column, or several joined by ':')."""
        count = self.count(names)
        if count > self.settings.max_levels_per_factor:
            raise InvalidRequest.one(
                field,
                f"the factor '{':'.join(names)[:60]}' has {count} levels; "
                f"the limit is {self.settings.max_levels_per_factor}",
            )
        return count

    def width(self, term: Any, field: str) -> int:
        """Design columns of a term (1 for the intercept)."""
        width = 1
        for component in getattr(term, "components", []):
            names = self.categorical(component)
            if names:
                count = self.count(names)
                if count > self.settings.max_levels_per_categorical:
                    shown = ", ".join(names)[:60]
                    raise InvalidRequest.one(
                        field,
                        f"the categorical '{shown}' has {count} levels; a term's categorical "
                        f"may have {self.settings.max_levels_per_categorical} (a factor with "
                        "many levels fits better as a group term, as in '(1 | ...)')",
                    )
                width *= count
        return width

    def categorical(self, component: Any) -> tuple[str, ...]:
        """The columns whose levels a term component takes, or () for a number."""
        call = getattr(component, "call", None)
        if call is not None:
            names = sorted(name for name in component.var_names if name)
            return tuple(names) if call.callee == "C" else ()
        name = str(component.name)
        if getattr(component, "reference", None) is not None:
            return ()  # x[level]: one indicator column
        first = next((v for v in self.columns[name] if v is not None), None)
        if name in self.declared or isinstance(first, str | bool):
            return (name,)
        return ()


def _mib(size: int) -> str:
    return f"{size / 1024**2:,.1f} MiB"
