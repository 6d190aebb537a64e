"""CSV uploads: columns typed as a whole without merging labels, one set of missing spellings,
clear refusals, and a stream that stops at the first limit it passes."""

from __future__ import annotations

import io
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from typing import BinaryIO, cast

import pytest

from service.api.validation import parse_csv
from service.core.errors import InvalidRequest
from service.core.schemas import Scalar

LIMITS = {"max_rows": 1000, "max_columns": 20, "max_cells": 10_000}


def parse(payload: bytes, **limits: int) -> dict[str, list[Scalar]]:
    return parse_csv(io.BytesIO(payload), **{**LIMITS, **limits})


def column(*cells: str) -> list[Scalar]:
    """Column ``x`` of a file whose cells are ``cells`` (beside a row number, so that an empty
    cell is not a blank line)."""
    lines = "".join(f"{i},{cell}\n" for i, cell in enumerate(cells))
    return parse(("i,x\n" + lines).encode())["x"]


def refusal(payload: bytes | BinaryIO, **limits: int) -> str:
    source = io.BytesIO(payload) if isinstance(payload, bytes) else payload
    with pytest.raises(InvalidRequest) as caught:
        parse_csv(source, **{**LIMITS, **limits})
    (error,) = caught.value.errors
    assert error.field == "file"
    return error.message


class Generated(io.RawIOBase):
    """A read-only file served lazily from byte chunks; counts the bytes read from it."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = b""
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self.pending:
            self.pending = next(self.chunks, b"")
            if not self.pending:
                return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        self.served += n
        return n


def test_cells_are_typed_and_blanks_are_missing() -> None:
    text = b"school,score,passed,name with space\n1,2.5,true,a\n2,,false,b\n3,4,NA,c\n"
    assert parse(text) == {
        "school": [1, 2, 3],
        "score": [2.5, None, 4.0],
        "passed": [True, False, None],
        "name with space": ["a", "b", "c"],
    }


def test_labels_that_are_written_differently_stay_distinct_text() -> None:
    labels = ["01", "1", "+1", "02", "2", "1_0", "10", "3"]
    assert column(*labels) == labels


@pytest.mark.parametrize(
    "cells",
    [
        ("١٢",),
        ("1e3", "1000"),
        ("2.5", "2.50"),
        ("1", "1.0"),
        ("0", "-0.0"),
        ("-0", "0"),
        ("0.1", "0.10000000000000001"),
        ("1.", "2"),
        (".5", "2"),
        ("1e400",),
        ("inf", "1"),
        ("Infinity",),
        ("1,000",),
    ],
)
def test_a_column_that_typing_would_change_stays_text(cells: tuple[str, ...]) -> None:
    quoted = tuple(f'"{cell}"' for cell in cells)
    assert column(*quoted) == list(cells)


def test_a_column_of_plain_decimals_is_numbers() -> None:
    assert column("1.5", "2", "-3.25", "1e-3", "NA", "0") == [1.5, 2.0, -3.25, 0.001, None, 0.0]


def test_a_column_of_plain_whole_numbers_is_whole_numbers() -> None:
    values = column("0", "-7", "10", "123456789012345678901234567890", "")
    assert values == [0, -7, 10, 123456789012345678901234567890, None]
    assert all(type(v) is int for v in values if v is not None)


def test_booleans_are_true_and_false_in_one_spelling_each() -> None:
    assert column("TRUE", "false", "TRUE") == [True, False, True]
    assert column("True", "true") == ["True", "true"]
    assert column("true", "yes") == ["true", "yes"]


@pytest.mark.parametrize("word", ["", "NA", "N/A", "NaN", "null", "None"])
def test_every_missing_spelling_is_missing_in_any_letter_case(word: str) -> None:
    spellings = {word, word.lower(), word.upper(), word.swapcase()}
    for typed in (["1"], ["1.5"], ["true"], ["text"]):
        cells = column(*typed, *spellings)
        assert cells[1:] == [None] * len(spellings)


def test_spaces_and_tabs_around_cells_and_names_are_removed_for_every_type() -> None:
    text = b" n , x ,b, t\n 1 ,\t2.5 , true ,\ta b \n1,2.5,true,a b\n"
    assert parse(text) == {
        "n": [1, 1],
        "x": [2.5, 2.5],
        "b": [True, True],
        "t": ["a b", "a b"],
    }


def test_quoted_cells_may_hold_commas_and_line_breaks() -> None:
    assert parse(b'a,b\n"x, y","1\n2"\n') == {"a": ["x, y"], "b": ["1\n2"]}


def test_blank_lines_are_skipped_anywhere() -> None:
    assert parse(b"\n\na\n\n1\n , \t\n2\n\n") == {"a": [1, 2]}


def test_a_header_alone_gives_empty_columns() -> None:
    assert parse(b"\xef\xbb\xbfa,b\n") == {"a": [], "b": []}


def test_a_spooled_upload_is_read_through_its_bom_and_left_open() -> None:
    for max_size in (1, 1000):  # on disk and in memory, as Starlette spools uploads
        with tempfile.SpooledTemporaryFile(max_size=max_size) as upload:
            upload.write("\ufeffschool,y\n01,1\n1,2\n".encode())
            upload.seek(0)
            source = cast(BinaryIO, upload)
            columns = parse_csv(source, max_rows=10, max_columns=10, max_cells=100)
            assert columns == {"school": ["01", "1"], "y": [1, 2]}
            assert not upload.closed


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "the CSV file has no header row"),
        (b"\n \n", "the CSV file has no header row"),
        (b"a,,b\n1,2,3\n", "column 2 of the header has no name"),
        (b"a,b,a\n1,2,3\n", "the CSV header repeats the columns ['a']"),
        (b"a,b\n1,2\n3\n", "line 3 has 1 fields; the header has 2"),
        (b'a,b\n1,2\n"x\ny",3\n4\n', "line 5 has 1 fields; the header has 2"),
        (b"a,b\n1,2\n\n3,4,5\n", "line 4 has 3 fields; the header has 2"),
        (b"a,b\n\xff\xfe,1\n", "the CSV file is not UTF-8 text"),
        ("a,b\né,1\n".encode("latin-1"), "the CSV file is not UTF-8 text"),
    ],
)
def test_bad_files_are_refused(payload: bytes, message: str) -> None:
    assert refusal(payload) == message


def test_a_header_over_the_column_limit_is_refused() -> None:
    header = ",".join(f"c{i}" for i in range(21)).encode()
    assert refusal(header + b"\n") == "the file has 21 columns; the limit is 20"


def test_rows_over_the_row_limit_are_refused() -> None:
    assert refusal(b"a\n" + b"1\n" * 11, max_rows=10) == (
        "the file has more than 10 rows; the limit is 10"
    )
    assert parse(b"a\n" + b"1\n" * 10, max_rows=10) == {"a": [1] * 10}


def test_rows_times_columns_over_the_cell_limit_are_refused() -> None:
    assert refusal(b"a,b,c\n" + b"1,2,3\n" * 34, max_cells=100) == (
        "the file has more than 100 cells (rows x columns); the limit is 100"
    )
    assert len(parse(b"a,b,c\n" + b"1,2,3\n" * 33, max_cells=100)["a"]) == 33


def test_a_cell_over_the_character_limit_is_refused_with_its_line() -> None:
    assert refusal(b"a,b\n1,2\n" + b"x" * 11 + b",2\n", max_cell_chars=10) == (
        "line 3 has a cell of more than 10 characters; the limit is 10"
    )
    assert parse(b"a\n" + b"x" * 10 + b"\n", max_cell_chars=10) == {"a": ["x" * 10]}


def test_a_cell_past_the_csv_modules_own_limit_is_refused_as_too_long() -> None:
    header = ",".join(f"c{i}" for i in range(100)).encode()
    payload = header + b'\n"' + b"x" * 140_000 + b'"' + b",1" * 99 + b"\n"
    message = refusal(payload, max_columns=100)
    assert message == "line 2 has a cell of more than 1000 characters; the limit is 1000"


@pytest.mark.parametrize(
    "row",
    [b'"' + b"x" * 200_000 + b'",1\n', b"," * 200_000 + b"\n", b'"' + b"x\n" * 100_000 + b'",1\n'],
)
def test_a_row_longer_than_its_cells_can_be_is_refused_before_it_is_read_whole(
    row: bytes,
) -> None:
    assert refusal(b"a,b\n" + row) == (
        "line 2 is longer than 4008 characters, more than 2 column(s) "
        "of at most 1000 characters need"
    )


def test_a_flood_of_blank_lines_is_refused() -> None:
    assert refusal(b"a\n1\n" + b"\n" * 11, max_rows=10) == (
        "the file has more than 10 blank lines; the limit is 10"
    )


def test_a_file_far_over_the_row_limit_is_refused_quickly_with_bounded_memory() -> None:
    row = b"school-0001,0.123456,true\n"
    n_rows = 2_000_000
    size = len(b"g,y,b\n") + n_rows * len(row)  # 52 MB
    chunks = iter([b"g,y,b\n"] + [row * 10_000] * (n_rows // 10_000))
    source = Generated(chunks)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        reader = cast(BinaryIO, io.BufferedReader(source))
        message = refusal(reader, max_rows=10_000, max_cells=10**9)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert message == "the file has more than 10000 rows; the limit is 10000"
    assert source.served < 0.01 * size
    assert peak < 0.2 * size
    assert elapsed < 10


def test_one_huge_line_is_refused_with_bounded_memory() -> None:
    size = 50_000_000
    source = Generated(iter([b"a,b\n"] + [b"," * 1_000_000] * (size // 1_000_000)))
    tracemalloc.start()
    try:
        message = refusal(cast(BinaryIO, io.BufferedReader(source)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message.startswith("line 2 is longer than 4008 characters")
    assert source.served < 0.05 * size
    assert peak < 0.05 * size
