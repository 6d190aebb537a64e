"""The documentation says what the code does: every setting with its true default, every
failure reason, and a README a newcomer reads in five minutes."""

from __future__ import annotations

from service.core.schemas import FailureReason
from service.core.settings import markdown_table
from tests.conftest import ROOT


def test_the_settings_table_is_current() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert markdown_table() in operations, "run: python -m service.core.settings"


def test_the_readme_lists_every_failure_reason() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [reason.value for reason in FailureReason if f"| `{reason.value}` |" not in readme]
    assert missing == []


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) < 200
