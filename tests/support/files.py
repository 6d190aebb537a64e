"""Where a local storage keeps a fit's files, for tests that look at the folder itself
(the service never does: it goes through ``Artifacts`` and ``Storage``)."""

from __future__ import annotations

from pathlib import Path

from service.core.artifacts import Artifacts
from service.core.storage import LocalStorage


def fit_folder(artifacts: Artifacts, fit_id: str) -> Path:
    """The folder of a fit in a local storage."""
    assert isinstance(artifacts.storage, LocalStorage), "only a local storage has folders"
    return artifacts.storage.root / "fits" / fit_id


def fit_file(artifacts: Artifacts, fit_id: str, name: str) -> Path:
    """One file of a fit in a local storage."""
    return fit_folder(artifacts, fit_id) / name
