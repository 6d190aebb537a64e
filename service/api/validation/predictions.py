"""New rows for a fitted model's predictions, checked against what the model was fitted on.

Prediction rows must hold, in every column the model uses, the type the column had in
training (a boolean, a whole-number label or a text label of another type would silently
miss or hit the wrong level), values every transform of the model can take (``scale`` and
its kin with the training data's mean and sd), and are bounded by the values the worker
would compute for them (rows x posterior draws).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from service.api.validation.data import check_values, to_columns
from service.api.validation.text import check_data_text, check_text, column_names
from service.api.validation.transforms import check_transforms, describe_rows
from service.core.errors import FieldError, InvalidRequest
from service.core.formula import check_formula
from service.core.schemas import Columns, FitSpec, Records, Scalar
from service.core.settings import Settings


def validate_prediction_data(
    data: Records | Columns, spec: FitSpec, settings: Settings
) -> dict[str, list[Scalar]]:
    """New rows must carry every column the model uses, each with its training type, and
    values every transform of the model can take; the rows x draws they cost is bounded."""
    check_text(column_names(data), "data")
    columns = to_columns(
        data, max_rows=settings.max_prediction_rows, max_columns=settings.max_columns
    )
    _check_prediction_size(len(next(iter(columns.values()))), spec, settings)
    infos = [
        check_formula(formula, spec.columns, max_length=len(formula), parameter=parameter)
        for formula, parameter in [(spec.formula, None)]
        + [(f"{p} ~ {rhs}", p) for p, rhs in spec.distributional.items()]
    ]
    needed: set[str] = set()
    for info in infos:
        needed |= info.predictors
        if isinstance(info.trials, str):
            needed.add(info.trials)
    missing = sorted(needed - set(columns))
    if missing:
        raise InvalidRequest.one("data", f"the new data lacks the columns {missing}")
    check_values(columns, needed, "data", allow_missing=False)
    check_data_text(columns, needed)
    labels = set(spec.categorical).union(*(info.categorical for info in infos))
    _check_types(columns, spec.columns, needed, labels)
    for info in infos:
        check_transforms(info.transforms, columns, field="data", reference=spec.columns)
    return {name: columns[name] for name in sorted(needed)}


def _check_prediction_size(n_rows: int, spec: FitSpec, settings: Settings) -> None:
    draws = spec.sampler.draws * spec.sampler.chains
    cells = n_rows * draws
    if cells > settings.max_prediction_cells:
        most = settings.max_prediction_cells // draws
        raise InvalidRequest.one(
            "data",
            f"{n_rows} rows x {draws} posterior draws ({spec.sampler.chains} chains x "
            f"{spec.sampler.draws}) would be {cells:,} predicted values; the limit is "
            f"{settings.max_prediction_cells:,}: send at most {most} rows per request",
        )


def _is_boolean(value: Scalar) -> bool:
    return isinstance(value, bool)


def _is_text(value: Scalar) -> bool:
    return isinstance(value, str)


def _is_whole(value: Scalar) -> bool:
    return type(value) is int


def _is_number(value: Scalar) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: What each kind of training column takes in new rows, and how a refusal describes it.
_TYPES = {
    "boolean": (_is_boolean, "true/false values"),
    "text": (_is_text, "text"),
    "whole": (_is_whole, "whole numbers (send 3, not 3.0, '3' or true)"),
    "number": (_is_number, "numbers (not text or true/false)"),
}


def _check_types(
    columns: Mapping[str, Sequence[Scalar]],
    training: Mapping[str, Sequence[Scalar]],
    needed: Collection[str],
    labels: Collection[str],
) -> None:
    """Each column holds the type it had in training: booleans, text, or numbers; a column
    of whole numbers that labels levels (a factor, ``C(...)``, declared categorical) holds
    whole numbers only, since 1.0, "1" and true would match no level or the wrong one."""
    errors = []
    for name in sorted(needed):
        kind = _kind(training[name], labels=name in labels)
        accepts, described = _TYPES[kind]
        bad = [i for i, value in enumerate(columns[name]) if not accepts(value)]
        if bad:
            errors.append(
                FieldError(
                    f"data.{name[:60]}",
                    f"the model was fitted with {described} in this column; "
                    f"{describe_rows(bad)} {'hold' if len(bad) > 1 else 'holds'} something else",
                )
            )
    if errors:
        raise InvalidRequest(errors)


def _kind(values: Sequence[Scalar], *, labels: bool) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return "boolean"
    if kinds == {str}:
        return "text"
    if kinds == {int} and labels:
        return "whole"
    return "number"
