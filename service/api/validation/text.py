"""Text that UTF-8 cannot encode (a lone surrogate code point) is refused wherever a request
holds it: every string of a fit request, the column names, and the values of the columns
the model uses (read once their types are known)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

from pydantic import BaseModel

from service.core.errors import FieldError, InvalidRequest
from service.core.schemas import Columns, FitRequest, Records, Scalar

INVALID_TEXT = "holds text that is not valid Unicode (a lone surrogate code point)"


def check_text(value: object, field: str = "") -> None:
    """Refuse strings with a lone surrogate anywhere in ``value`` (models, dicts, lists).

    JSON can carry ``"\\ud800"``, but UTF-8 cannot encode it: the spec could not be stored
    and no answer that echoes it could be sent. A name that holds one is reported on the
    field that holds the name (``data`` for a column name, ``priors`` for a prior's key).
    """
    fields = sorted(set(_invalid_text(value, field)))
    if fields:
        raise InvalidRequest([FieldError(f or "body", INVALID_TEXT) for f in fields[:20]])


def _invalid_text(value: object, field: str) -> Iterator[str]:
    if isinstance(value, str):
        if not _valid(value):
            yield field
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _invalid_text(getattr(value, name), _join(field, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not _valid(key):
                yield field
            else:
                yield from _invalid_text(item, _join(field, str(key)))
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _invalid_text(item, field)


def _valid(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def check_request_text(request: FitRequest) -> None:
    """Every string of the request but the data's values, which ``check_data_text`` reads
    for the columns the model uses only (once their types are known)."""
    fields = {name: getattr(request, name) for name in type(request).model_fields}
    data = fields.pop("data")
    check_text(fields)
    check_text(column_names(data), "data")


def column_names(data: Records | Columns) -> set[str]:
    """The names of the data's columns (of every record, for records)."""
    if isinstance(data, dict):
        return set(data)
    names: set[str] = set()
    for record in data:
        names.update(record)
    return names


def check_data_text(columns: Mapping[str, Sequence[Scalar]], used: Collection[str]) -> None:
    """The text values of used columns (each column holds one type, ``check_values`` saw)."""
    errors = [
        FieldError(f"data.{name}", INVALID_TEXT)
        for name in sorted(used)
        if not _valid_text_column(columns[name])
    ]
    if errors:
        raise InvalidRequest(errors)


def _valid_text_column(values: Sequence[Scalar]) -> bool:
    if not isinstance(next((v for v in values if v is not None), None), str):
        return True
    texts = "".join(v for v in set(values) if isinstance(v, str))
    return _valid(texts)  # UTF-8 refuses a surrogate even next to its partner
