"""Numeric checks of a formula's transforms: ``log(x)`` at x <= 0 and its kin are refused.

formulae computes every allow-listed call (``log(x)``, ``I(x ** 2)``, ``scale(z)``...) with
numpy on the data's columns. A log of 0, a square root of -1, an ``exp`` past 709, a division
by 0 or a ``scale`` of a constant column gives inf or NaN, which Bambi then samples with (the
fit fails late) or predicts with (the answer holds nulls); a power of a column of whole
numbers is computed in int64 and wraps around past 2**63 without a word.

``check_transforms`` evaluates the same calls on the same rows first and refuses the first
call whose value is not a finite number, naming the call and the rows. It walks the syntax
tree that ``formula.check_formula`` has already checked (columns, numbers, ``+ - * / **`` and
allow-listed calls only): each node maps to one numpy operation, and no text is evaluated.
Each call computes what it computes in formulae 0.6 with Bambi 0.21:

- ``log``, ``log2``, ``log10``, ``exp``, ``sqrt``, ``abs``: numpy's;
- ``center(x)`` is ``x - mean(x)``; ``scale(x)`` and ``standardize(x)`` are
  ``(x - mean(x)) / sd(x)`` with the population sd. Both remember the training data's mean and
  sd: given ``reference`` (the training columns), new rows are centred and scaled with those;
- ``I``, ``C`` and ``offset`` pass their argument through (``C`` of a bare column makes a
  category, not a number, and is not evaluated);
- a whole-number column stays whole through ``+ - * **`` (pandas' int64), and a whole value
  of 2**63 or more is refused as an overflow; ``/`` gives floats.

A transform of a text or boolean column is refused too: formulae fails on text, and computes
with true/false as 1/0 where everywhere else a boolean column is a category.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from formulae.expr import Binary, Call, Grouping, Literal, QuotedName, Unary, Variable

from service.core.errors import InvalidRequest
from service.core.schemas import Scalar

WHOLE_LIMIT = 2.0**63
ROWS_SHOWN = 5

_FUNCTIONS = {
    "log": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "abs": np.abs,
}
_STANDARDIZE = frozenset({"center", "scale", "standardize"})
_HINTS = {
    "log": "log needs values above 0",
    "log2": "log2 needs values above 0",
    "log10": "log10 needs values above 0",
    "sqrt": "sqrt needs values of 0 or more",
    "exp": "exp overflows above about 709",
    "scale": "scale needs values that vary",
    "standardize": "standardize needs values that vary",
}
_GENERIC_HINT = "a division by 0, or a value too large"


@dataclass(frozen=True)
class _Value:
    numbers: np.ndarray  # float64: one per row, or a 0-d array for a constant
    whole: bool  # what pandas would hold as int64


def check_transforms(
    nodes: Sequence[object],
    columns: Mapping[str, Sequence[Scalar]],
    *,
    field: str,
    rows: Sequence[int] | None = None,
    reference: Mapping[str, Sequence[Scalar]] | None = None,
) -> None:
    """Refuse (422 on ``field``) the first call whose value is not finite in some row.

    ``nodes`` are calls from ``FormulaInfo.transforms``; ``rows`` numbers the rows of
    ``columns`` as the client sent them; ``reference`` holds the training columns for the
    mean and sd of ``center``/``scale``/``standardize`` (the rows' own otherwise).
    """
    evaluator = _Evaluator(columns, field, rows, reference)
    with np.errstate(all="ignore"):
        for node in nodes:
            if not _is_category(node):
                evaluator.value(node)


def render(node: object) -> str:
    """The expression as formula text (``log(x + 1)``)."""
    if isinstance(node, Variable):
        return str(node.name.lexeme)
    if isinstance(node, QuotedName):
        return str(node.expression.lexeme)
    if isinstance(node, Literal):
        return str(node.value)
    if isinstance(node, Grouping):
        return f"({render(node.expression)})"
    if isinstance(node, Unary):
        return f"{node.operator.lexeme}{render(node.right)}"
    if isinstance(node, Binary):
        return f"{render(node.left)} {node.operator.lexeme} {render(node.right)}"
    if isinstance(node, Call):
        return f"{_callee(node)}({', '.join(render(arg) for arg in node.args)})"
    return "?"


def describe_rows(numbers: Sequence[int]) -> str:
    """``row 3`` or ``rows 3, 8, 12, 20, 31 and 40 more``."""
    shown = ", ".join(str(n) for n in numbers[:ROWS_SHOWN])
    more = f" and {len(numbers) - ROWS_SHOWN} more" if len(numbers) > ROWS_SHOWN else ""
    return f"row{'s' if len(numbers) > 1 else ''} {shown}{more}"


def _callee(node: Call) -> str:
    return str(node.callee.name.lexeme)


def _is_category(node: object) -> bool:
    return (
        isinstance(node, Call)
        and _callee(node) == "C"
        and isinstance(node.args[0], Variable | QuotedName)
    )


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Evaluator:
    """Evaluates checked arithmetic on columns, refusing at the first non-finite call."""

    def __init__(
        self,
        columns: Mapping[str, Sequence[Scalar]],
        field: str,
        rows: Sequence[int] | None,
        reference: Mapping[str, Sequence[Scalar]] | None,
    ) -> None:
        self.columns = columns
        self.field = field
        self.rows = rows
        self.reference = reference
        self.n = len(next(iter(columns.values())))
        self.calls: list[Call] = []  # the calls being evaluated, innermost last
        self.cache: dict[str, _Value] = {}

    def value(self, node: object) -> _Value:
        if isinstance(node, Variable):
            return self.column(str(node.name.lexeme))
        if isinstance(node, QuotedName):
            return self.column(str(node.expression.lexeme)[1:-1])
        if isinstance(node, Literal):
            number = node.value
            return _Value(np.asarray(float(number)), isinstance(number, int))
        if isinstance(node, Grouping):
            return self.value(node.expression)
        if isinstance(node, Unary):
            inner = self.value(node.right)
            sign = -1.0 if node.operator.kind == "MINUS" else 1.0
            return _Value(sign * inner.numbers, inner.whole)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Call):
            return self.call(node)
        raise TypeError("check_formula admits no other node")

    def column(self, name: str) -> _Value:
        if name not in self.cache:
            values = self.columns[name]
            kinds = {type(v) for v in values}
            for kind, holds in ((str, "text"), (bool, "true/false values")):
                if kind in kinds:
                    raise self.refuse(
                        f"'{_clip(render(self.calls[0]))}' needs numbers, and "
                        f"'{_clip(name)}' holds {holds}"
                    )
            numbers = np.asarray(values, dtype=float)
            self.cache[name] = _Value(numbers, kinds <= {int})
        return self.cache[name]

    def binary(self, node: Binary) -> _Value:
        left, right = self.value(node.left), self.value(node.right)
        kind = node.operator.kind
        if kind == "PLUS":
            numbers = left.numbers + right.numbers
        elif kind == "MINUS":
            numbers = left.numbers - right.numbers
        elif kind == "STAR":
            numbers = left.numbers * right.numbers
        elif kind == "SLASH":
            numbers = left.numbers / right.numbers
        else:
            numbers = left.numbers**right.numbers
        value = _Value(numbers, left.whole and right.whole and kind != "SLASH")
        self.check(self.calls[-1], value)
        return value

    def call(self, node: Call) -> _Value:
        name = _callee(node)
        self.calls.append(node)
        argument = self.value(node.args[0])
        if name in _FUNCTIONS:
            value = _Value(_FUNCTIONS[name](argument.numbers), argument.whole and name == "abs")
        elif name in _STANDARDIZE:
            value = self.standardized(name, node.args[0], argument)
        else:  # I, C and offset
            value = argument
        self.check(node, value)
        self.calls.pop()
        return value

    def standardized(self, name: str, argument_node: object, argument: _Value) -> _Value:
        """``center``/``scale``/``standardize`` with the training data's mean and sd."""
        basis = argument.numbers
        if self.reference is not None:
            training = _Evaluator(self.reference, self.field, None, None)
            training.calls = list(self.calls)
            basis = training.value(argument_node).numbers
        centred = argument.numbers - np.mean(basis)
        if name == "center":
            return _Value(centred, False)
        return _Value(centred / np.std(basis), False)

    def check(self, call: Call, value: _Value) -> None:
        numbers = np.broadcast_to(value.numbers, (self.n,))
        bad = ~np.isfinite(numbers)
        hint = _HINTS.get(_callee(call), _GENERIC_HINT)
        if value.whole and (np.abs(numbers[~bad]) >= WHOLE_LIMIT).any():
            bad |= np.abs(numbers) >= WHOLE_LIMIT
            hint = "past the range of whole numbers"
        if bad.any():
            raise self.refuse(
                f"'{_clip(render(call))}' is not a finite number in "
                f"{self.describe(np.flatnonzero(bad))} ({hint})"
            )

    def describe(self, positions: np.ndarray) -> str:
        """The rows at ``positions``, numbered as the client sent them."""
        numbers = [int(p) if self.rows is None else self.rows[int(p)] for p in positions]
        return describe_rows(numbers)

    def refuse(self, message: str) -> InvalidRequest:
        return InvalidRequest.one(self.field, message)
