"""CSV uploads as columns: a header row, then values typed as whole numbers, numbers,
true/false, or text. Empty cells and NA/NaN are missing values."""

from __future__ import annotations

import csv
import io

from service.core.errors import InvalidRequest
from service.core.schemas import Scalar

MISSING = {"", "NA", "N/A", "NaN", "nan", "null", "NULL"}


def _typed(cell: str) -> Scalar:
    text = cell.strip()
    if text in MISSING:
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_csv(payload: bytes, field: str = "file") -> dict[str, list[Scalar]]:
    """Columns from a CSV file (UTF-8, comma-separated, header first)."""
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest.one(field, "the CSV file is not UTF-8 text") from exc
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InvalidRequest.one(
            field, "the CSV file could not be read (a field is too long?)"
        ) from exc
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise InvalidRequest.one(field, "the CSV file has no header row")
    header = [name.strip() for name in rows[0]]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise InvalidRequest.one(field, f"the CSV header repeats the columns {duplicates[:5]}")
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InvalidRequest.one(
                field, f"line {number} has {len(row)} fields; the header has {len(header)}"
            )
    columns: dict[str, list[Scalar]] = {name: [] for name in header}
    for row in body:
        for name, cell in zip(header, row, strict=True):
            columns[name].append(_typed(cell))
    for name, values in columns.items():
        # a column of whole numbers and numbers is numeric
        if any(isinstance(v, float) for v in values):
            columns[name] = [
                float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values
            ]
    return columns
