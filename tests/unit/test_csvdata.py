"""CSV uploads: typed cells, missing values, and clear refusals."""

from __future__ import annotations

import pytest

from service.core.csvdata import parse_csv
from service.core.errors import InvalidRequest


def test_cells_are_typed_and_blanks_are_missing() -> None:
    text = b"school,score,passed,name with space\n1,2.5,true,a\n2,,false,b\n3,4,NA,c\n"
    assert parse_csv(text) == {
        "school": [1, 2, 3],
        "score": [2.5, None, 4.0],
        "passed": [True, False, None],
        "name with space": ["a", "b", "c"],
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "no header row"),
        (b"a,b,a\n1,2,3\n", "repeats the columns ['a']"),
        (b"a,b\n1,2\n3\n", "line 3 has 1 fields; the header has 2"),
        (b"a,b\n\xff\xfe,1\n", "not UTF-8"),
        (b'a,b\n"' + b"x" * 200_000 + b'",1\n', "could not be read"),
    ],
)
def test_bad_files_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_csv(payload)
    assert caught.value.errors[0].field == "file"
    assert message in caught.value.errors[0].message
