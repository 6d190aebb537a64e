"""The data's shape and values: records or columns become columns, bounded in rows and
columns, and every column the model uses holds finite values of one type.

Fits and predictions both read their data through here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from service.core.errors import FieldError, InvalidRequest
from service.core.schemas import Columns, Records, Scalar


def to_columns(
    data: Records | Columns, *, max_rows: int, max_columns: int, field: str = "data"
) -> dict[str, list[Scalar]]:
    """Normalise records or columns into columns; refuse empty, ragged or oversized data."""
    if isinstance(data, list):
        columns = _records_to_columns(data, field)
    else:
        columns = {name: list(values) for name, values in data.items()}
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"'{name}' has {n}" for name, n in list(lengths.items())[:5])
            raise InvalidRequest.one(field, f"columns must have equal lengths: {detail}")
    if not columns or not next(iter(columns.values())):
        raise InvalidRequest.one(field, "the data has no rows")
    if len(columns) > max_columns:
        raise InvalidRequest.one(
            field, f"the data has {len(columns)} columns; the limit is {max_columns}"
        )
    n_rows = len(next(iter(columns.values())))
    if n_rows > max_rows:
        raise InvalidRequest.one(field, f"the data has {n_rows} rows; the limit is {max_rows}")
    for name in columns:
        if not name.strip():
            raise InvalidRequest.one(field, "a column has an empty name")
    return columns


def _records_to_columns(records: Records, field: str) -> dict[str, list[Scalar]]:
    if not records:
        raise InvalidRequest.one(field, "the data has no rows")
    names = list(records[0])
    expected = set(names)
    for index, record in enumerate(records):
        if set(record) != expected:
            missing = sorted(expected - set(record))
            extra = sorted(set(record) - expected)
            what = f"lacks {missing}" if missing else f"has extra fields {extra}"
            raise InvalidRequest.one(
                f"{field}[{index}]", f"every record needs the same fields; this one {what}"
            )
    return {name: [record[name] for record in records] for name in names}


def check_values(
    columns: Mapping[str, Sequence[Scalar]], used: set[str], field: str, *, allow_missing: bool
) -> None:
    """Refuse missing (unless allowed), non-finite or mixed-type values in used columns."""
    errors: list[FieldError] = []
    for name in sorted(used):
        values = columns[name]
        missing = sum(value is None for value in values)
        if missing and not allow_missing:
            errors.append(
                FieldError(
                    f"{field}.{name}",
                    f"{missing} missing values (send na_action 'drop' to drop those rows)",
                )
            )
        bad = sum(isinstance(v, float) and not math.isfinite(v) for v in values)
        if bad:
            errors.append(FieldError(f"{field}.{name}", f"{bad} values are not finite numbers"))
        huge = sum(isinstance(v, int) and abs(v) > 2**53 for v in values)
        if huge:
            errors.append(FieldError(f"{field}.{name}", f"{huge} values are too large"))
        kinds = {type(v) for v in values if v is not None}
        if str in kinds and kinds - {str}:
            errors.append(FieldError(f"{field}.{name}", "mixes text with numbers or booleans"))
        elif bool in kinds and kinds - {bool}:
            errors.append(FieldError(f"{field}.{name}", "mixes booleans with numbers"))
    if errors:
        raise InvalidRequest(errors)
