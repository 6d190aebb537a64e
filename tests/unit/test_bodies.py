"""Request bodies are read with memory bounded by the limits: the data streams into columns
and is refused at the first row, column, cell or text over a limit; text is valid Unicode;
a syntax error names the field it is in."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from service.api.bodies import DataLimits, parse_body
from service.core.errors import InvalidRequest

LIMITS = DataLimits(max_rows=1000, max_columns=5, max_cells=3000, max_text_chars=20)


def refusal(payload: bytes, limits: DataLimits = LIMITS) -> tuple[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(payload, limits)
    (error,) = caught.value.errors
    return error.field, error.message


def test_records_and_columns_become_the_same_columns() -> None:
    records = [{"g": "a", "y": 1.5}, {"g": "b", "y": 2}]
    columns = {"g": ["a", "b"], "y": [1.5, 2]}
    for data in (records, columns):
        body = json.dumps({"formula": "y ~ (1|g)", "data": data}).encode()
        assert parse_body(body, LIMITS) == {"formula": "y ~ (1|g)", "data": columns}


def test_repeated_labels_share_one_string() -> None:
    parsed = parse_body(json.dumps({"data": {"g": ["school"] * 3}}).encode(), LIMITS)
    first, second, third = parsed["data"]["g"]
    assert first is second is third


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ([{"y": i} for i in range(1001)], "data", "more than 1000 rows"),
        ({"y": list(range(1001))}, "data", "more than 1000 rows"),
        ({f"c{i}": [1] for i in range(6)}, "data", "more than 5 columns"),
        ({f"c{i}": list(range(700)) for i in range(5)}, "data", "more than 3000 values"),
        ({"g": ["x" * 21]}, "data.g", "longer than 20 characters"),
        ([{"y": 1}, {"z": 1}], "data[1]", "lacks ['y']"),
        ([{"y": 1}, 2], "data[1]", "must be an object"),
        ({"y": [[1]]}, "data.y", "must be a number, text"),
        ({"y": 3}, "data.y", "must be a list"),
        ("rows", "data", "list of records or an object of columns"),
    ],
)
def test_data_over_a_limit_or_out_of_shape_is_refused_naming_it(
    data: object, field: str, message: str
) -> None:
    got_field, got_message = refusal(json.dumps({"data": data}).encode())
    assert (got_field, message in got_message) == (field, True), got_message


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (rb'{"data": {"g": ["a", "\ud800"]}}', "data.g"),
        (rb'{"data": [{"g": "\udc00"}]}', "data[0].g"),
        (rb'{"name": "x\ud83d"}', "name"),
        (rb'{"data": {"\udfff": [1]}}', "data"),
        (rb'{"formula": "y ~ `\ud800`"}', "formula"),
        (rb'{"data": {"g": ["\u0000"]}}', "data.g"),
    ],
)
def test_lone_surrogates_and_nul_are_refused_naming_the_field(raw: bytes, field: str) -> None:
    got_field, message = refusal(raw)
    assert got_field == field
    assert "not valid Unicode" in message


def test_a_surrogate_pair_and_an_escaped_backslash_are_ordinary_text() -> None:
    parsed = parse_body(rb'{"data": {"g": ["\ud83d\ude00", "\\ud800"]}}', LIMITS)
    assert parsed["data"]["g"] == ["\U0001f600", "\\ud800"]


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b'{"data": {"y": [1.0, NaN]}}', "data.y", "NaN and Infinity are not JSON numbers"),
        (b'{"data": {"y": [-Infinity]}}', "data.y", "NaN and Infinity"),
        (b'{"priors": {"x": {"params": {"mu": NaN}}}}', "priors.x.params.mu", "NaN"),
        (b'{"data": {"y": [1e400]}}', "data.y", "too large"),
        (b'{"data": {"y": [123456789012345678901234567890]}}', "data.y", "too large"),
        (b'{"formula": "y ~ x",', "formula", "not valid JSON"),
        (b'{"formula": "y ~ x"} trailing', "body", "not valid JSON"),
    ],
)
def test_a_syntax_error_names_the_field_it_is_in_never_a_byte_offset(
    raw: bytes, field: str, words: str
) -> None:
    got_field, message = refusal(raw)
    assert got_field == field
    assert words in message


def test_other_fields_are_capped_in_size_and_depth() -> None:
    deep = b'{"priors": ' + b'{"a": ' * 40 + b"1" + b"}" * 41
    assert refusal(deep)[1].startswith("nests more than")
    wide = json.dumps({"priors": {f"p{i}": i for i in range(30_000)}}).encode()
    assert refusal(wide) == ("priors.p19999", "is too large")


def test_a_body_far_over_the_row_limit_costs_memory_up_to_the_limit_only() -> None:
    rows = 1_500_000  # about 45 MiB of records
    payload = (
        b'{"formula": "y ~ x", "data": ['
        + b",".join([b'{"x": 0.25, "y": 1.5, "g": "s17"}'] * rows)
        + b"]}"
    )
    limits = DataLimits(max_rows=200_000, max_columns=100, max_cells=4_000_000, max_text_chars=100)
    tracemalloc.start()
    started = time.perf_counter()
    field, message = refusal(payload, limits)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (field, "more than 200000 rows" in message) == ("data", True)
    # what 200,000 rows of 3 columns take as Python objects (under 40 bytes a value),
    # far below the body's size
    assert peak < 40 * 3 * 200_000 < len(payload) / 2, f"peak {peak / 2**20:.0f} MiB"
    assert seconds < 20
