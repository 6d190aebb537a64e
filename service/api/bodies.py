"""JSON request bodies read with memory bounded by the limits, off the event loop.

A request body is parsed by a streaming parser (ijson's C backend) straight into the shape
the service needs: ``data`` becomes columns (records and columns alike) while it streams, and
the row, column, cell and text-length limits are enforced as it goes. A body far over a
limit costs parsing up to the limit, never its whole size in Python objects (a 40 MiB body
parsed whole took the API from 244 to 1289 MiB). The other fields (formula, priors,
sampler...) are small; they are built generically, capped at ``MAX_OTHER_EVENTS`` parts
and ``MAX_DEPTH`` levels.

Text must be valid Unicode: a lone UTF-16 surrogate escape (``"\\ud800"``) is refused with
the field that holds it (the C parser would silently turn it into ``?``), and so is NUL.
Repeated labels share one string object per column.

``read_model`` is what routes call: it reads the body, then parses and validates it in a
worker thread, at most ``PARSERS`` at a time per process, so that the event loop stays free
(health checks answer while a large body is parsed).
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ijson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from service.core.errors import FieldError, InvalidRequest
from service.core.schemas import Scalar
from service.core.settings import Settings

MAX_OTHER_EVENTS = 20_000
MAX_DEPTH = 16
#: Bodies parsed at once per API process (each is CPU work holding a thread).
PARSERS = 2

#: A \u escape of a UTF-16 surrogate that has no partner, after an even run of backslashes.
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)((?:\\\\)*)"
    rb"(\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<![0-9a-fA-F]{4})(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
_BAD_TEXT = "\x00"


@dataclass(frozen=True)
class DataLimits:
    """How much data one request may carry."""

    max_rows: int
    max_columns: int
    max_cells: int
    max_text_chars: int

    @classmethod
    def for_fits(cls, settings: Settings) -> DataLimits:
        """Limits of a fit request's data."""
        return cls(
            settings.max_rows, settings.max_columns, settings.max_cells, settings.max_text_chars
        )

    @classmethod
    def for_predictions(cls, settings: Settings) -> DataLimits:
        """Limits of a prediction request's rows."""
        return cls(
            settings.max_prediction_rows,
            settings.max_columns,
            settings.max_cells,
            settings.max_text_chars,
        )


def _mark_lone_surrogates(payload: bytes) -> bytes:
    """The body with every lone surrogate escape replaced by an escaped NUL, which the
    parser refuses with its field."""
    if b"\\u" not in payload:
        return payload
    return _LONE_SURROGATE.sub(rb"\1\\u0000", payload)


def parse_body(payload: bytes, limits: DataLimits) -> dict[str, Any]:
    """A JSON object with its ``data`` field as columns; InvalidRequest if refused."""
    payload = _mark_lone_surrogates(payload)
    events = ijson.basic_parse(io.BytesIO(payload), use_float=True)
    try:
        return _Parser(events, limits).document()
    except ijson.JSONError as exc:
        raise _syntax_error(payload, exc) from exc


def _syntax_error(payload: bytes, error: Exception) -> InvalidRequest:
    """The field where the JSON went wrong (found by parsing again up to the error), and
    what went wrong, in the service's words."""
    field = "body"
    try:
        for prefix, event, value in ijson.parse(io.BytesIO(payload), use_float=True):
            path = f"{prefix}.{value}" if event == "map_key" else prefix
            field = ".".join(p for p in path.split(".") if p and p != "item")[:120] or "body"
    except ijson.JSONError:
        pass
    text = str(error)
    if "overflow" in text:
        return InvalidRequest.one(field, "holds a number too large to read")
    if any(words in text for words in ("invalid char", "invalid string", "malformed number")):
        return InvalidRequest.one(
            field,
            "is not valid JSON here (NaN and Infinity are not JSON numbers: send null for a "
            "missing value)",
        )
    return InvalidRequest.one(field, "is not valid JSON here")


class _Parser:
    """A recursive descent over ijson's events."""

    def __init__(self, events: Iterator[tuple[str, Any]], limits: DataLimits) -> None:
        self.events = events
        self.limits = limits
        self.other_events = 0
        self.pending: tuple[str, Any] | None = None

    def next(self) -> tuple[str, Any]:
        if self.pending is not None:
            event, self.pending = self.pending, None
            return event
        try:
            return next(self.events)
        except StopIteration as exc:
            raise InvalidRequest.one("body", "ends too early") from exc

    def push_back(self, event: tuple[str, Any]) -> None:
        """Let the next ``next()`` return ``event`` again."""
        self.pending = event

    def document(self) -> dict[str, Any]:
        event, _ = self.next()
        if event != "start_map":
            raise InvalidRequest.one("body", "must be a JSON object")
        result: dict[str, Any] = {}
        while True:
            event, key = self.next()
            if event == "end_map":
                if next(self.events, None) is not None:  # reads to the end: trailing text
                    raise InvalidRequest.one("body", "holds more than one JSON value")
                return result
            self.text(key, "body")
            if key in result:
                raise InvalidRequest.one(key[:60], "appears twice in the body")
            result[key] = self.data() if key == "data" else self.value(key, depth=1)

    def text(self, value: str, field: str) -> str:
        if _BAD_TEXT in value:
            raise InvalidRequest.one(
                field, "holds text that is not valid Unicode (a lone surrogate or NUL)"
            )
        return value

    def value(self, field: str, depth: int) -> Any:
        """Any JSON value of a small field."""
        self.other_events += 1
        if self.other_events > MAX_OTHER_EVENTS:
            raise InvalidRequest.one(field, "is too large")
        if depth > MAX_DEPTH:
            raise InvalidRequest.one(field, f"nests more than {MAX_DEPTH} levels deep")
        event, value = self.next()
        if event == "start_map":
            result: dict[str, Any] = {}
            while True:
                event, key = self.next()
                if event == "end_map":
                    return result
                self.text(key, field)
                result[key] = self.value(f"{field}.{key[:60]}", depth + 1)
        if event == "start_array":
            items: list[Any] = []
            while True:
                item = self._item(field, depth)
                if item is _END:
                    return items
                items.append(item)
        return self._scalar(event, value, field)

    def _item(self, field: str, depth: int) -> Any:
        event, value = self.next()
        if event == "end_array":
            return _END
        self.push_back((event, value))
        return self.value(field, depth + 1)

    def _scalar(self, event: str, value: Any, field: str) -> Scalar:
        if event == "string":
            self.text(value, field)
            if len(value) > self.limits.max_text_chars:
                raise InvalidRequest.one(
                    field, f"holds text longer than {self.limits.max_text_chars} characters"
                )
            return str(value)
        if event in ("number", "boolean", "null"):
            return value  # type: ignore[no-any-return]
        raise InvalidRequest.one(field, "must be a number, text, true/false or null")

    # ---------------------------------------------------------------------------- data

    def data(self) -> dict[str, list[Scalar]]:
        event, _ = self.next()
        if event == "start_array":
            return self.records()
        if event == "start_map":
            return self.columns()
        raise InvalidRequest.one("data", "must be a list of records or an object of columns")

    def _cell(self, field: str, labels: dict[str, str]) -> Scalar:
        event, value = self.next()
        value = self._scalar(event, value, field)
        if isinstance(value, str) and len(value) <= 64:
            return labels.setdefault(value, value)
        return value

    def _check_size(self, rows: int, columns: int, cells: int) -> None:
        limits = self.limits
        for what, count, limit in (
            ("rows", rows, limits.max_rows),
            ("columns", columns, limits.max_columns),
            ("values (rows x columns)", cells, limits.max_cells),
        ):
            if count > limit:
                raise InvalidRequest.one(
                    "data", f"the data has more than {limit} {what}; the limit is {limit}"
                )

    def records(self) -> dict[str, list[Scalar]]:
        columns: dict[str, list[Scalar]] = {}
        labels: dict[str, dict[str, str]] = {}
        row = 0
        while True:
            event, _ = self.next()
            if event == "end_array":
                return columns
            if event != "start_map":
                raise InvalidRequest.one(f"data[{row}]", "must be an object of fields")
            record: dict[str, Scalar] = {}
            while True:
                event, key = self.next()
                if event == "end_map":
                    break
                self.text(key, "data")
                if key in record:
                    raise InvalidRequest.one(f"data[{row}]", "names a field twice")
                if row == 0:
                    self._check_size(1, len(record) + 1, len(record) + 1)
                    labels[key] = {}
                field = f"data[{row}].{key[:60]}"
                record[key] = self._cell(field, labels.get(key, {}))
            if row == 0:
                columns = {name: [value] for name, value in record.items()}
            else:
                self._append(columns, record, row)
            row += 1
            self._check_size(row, len(columns), row * len(columns))

    @staticmethod
    def _append(columns: dict[str, list[Scalar]], record: dict[str, Scalar], row: int) -> None:
        if record.keys() != columns.keys():
            missing = sorted(set(columns) - set(record))[:5]
            extra = sorted(set(record) - set(columns))[:5]
            what = f"lacks {missing}" if missing else f"has extra fields {extra}"
            raise InvalidRequest.one(
                f"data[{row}]", f"every record needs the same fields; this one {what}"
            )
        for name, value in record.items():
            columns[name].append(value)

    def columns(self) -> dict[str, list[Scalar]]:
        columns: dict[str, list[Scalar]] = {}
        cells = 0
        while True:
            event, name = self.next()
            if event == "end_map":
                return columns
            self.text(name, "data")
            if name in columns:
                raise InvalidRequest.one("data", f"the column '{name[:60]}' appears twice")
            self._check_size(0, len(columns) + 1, cells)
            event, _ = self.next()
            field = f"data.{name[:60]}"
            if event != "start_array":
                raise InvalidRequest.one(field, "must be a list of values")
            values: list[Scalar] = []
            labels: dict[str, str] = {}
            while True:
                event, value = self.next()
                if event == "end_array":
                    break
                self.push_back((event, value))
                values.append(self._cell(field, labels))
                cells += 1
                self._check_size(len(values), len(columns) + 1, cells)
            columns[name] = values


class _End:
    """Marks the end of an array."""


_END = _End()


# ---------------------------------------------------------------------------- for routes

_parsers: asyncio.Semaphore | None = None


def _parse_and_validate[ModelT: BaseModel](
    payload: bytes, model: type[ModelT], limits: DataLimits
) -> ModelT:
    fields = parse_body(payload, limits)
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


async def read_model[ModelT: BaseModel](
    request: Request, model: type[ModelT], limits: DataLimits
) -> ModelT:
    """The request's JSON body as ``model``, parsed off the event loop."""
    global _parsers
    payload = await request.body()
    if not payload.strip():
        raise InvalidRequest([FieldError("body", "is empty; send a JSON object")])
    if _parsers is None:
        _parsers = asyncio.Semaphore(PARSERS)
    async with _parsers:
        return await run_in_threadpool(_parse_and_validate, payload, model, limits)


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads ``model`` with ``read_model``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
