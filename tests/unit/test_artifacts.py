"""A fit's files: written whole or not at all, removed for real, and a damaged file is a
clear permanent error, never mistaken for an outage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.core.artifacts import Artifacts
from service.core.errors import DamagedResults, StorageError
from service.core.jobs import new_fit_id
from tests.support.files import fit_file, fit_folder
from tests.unit.test_job_store import spec


def test_a_truncated_json_file_is_damaged_results(tmp_path: Path) -> None:
    artifacts, fit_id = Artifacts(tmp_path), new_fit_id()
    artifacts.write_json(fit_id, "summary.json", {"fit_id": fit_id, "parameters": []})
    path = fit_file(artifacts, fit_id, "summary.json")
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DamagedResults) as caught:
        artifacts.read_json(fit_id, "summary.json")
    assert caught.value.status == 500
    assert "damaged" in caught.value.detail
    path.write_bytes(b"{}")
    artifacts.write_bytes(fit_id, "spec.json", b'{"formula": 1}')
    with pytest.raises(DamagedResults):
        artifacts.read_spec(fit_id)


def test_a_missing_file_is_not_found_not_damaged(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Artifacts(tmp_path).read_json(new_fit_id(), "summary.json")


def test_delete_removes_whatever_stands_in_the_fits_place(tmp_path: Path) -> None:
    artifacts = Artifacts(tmp_path)
    folder, stray = new_fit_id(), new_fit_id()
    artifacts.write_spec(folder, spec())
    (tmp_path / "fits" / stray).write_text("a file where a folder should be")
    for fit_id in (folder, stray, new_fit_id()):  # the last has no files at all
        artifacts.delete(fit_id)
        assert not os.path.lexists(fit_folder(artifacts, fit_id))


def test_a_delete_that_cannot_happen_says_so(tmp_path: Path) -> None:
    artifacts = Artifacts(tmp_path / "not-a-folder")
    (tmp_path / "not-a-folder").write_text("x")
    fit_id = new_fit_id()
    with pytest.raises(StorageError):
        artifacts.write_spec(fit_id, spec())


def test_discarding_results_keeps_the_request(tmp_path: Path) -> None:
    artifacts, fit_id = Artifacts(tmp_path), new_fit_id()
    artifacts.write_spec(fit_id, spec())
    for name in ("posterior.nc", "summary.json", "results.json"):
        artifacts.write_bytes(fit_id, name, b"x")
    artifacts.discard_results(fit_id)
    assert sorted(p.name for p in fit_folder(artifacts, fit_id).iterdir()) == ["spec.json"]


def test_a_staged_request_appears_only_once_published(tmp_path: Path) -> None:
    artifacts = Artifacts(tmp_path)
    kept, dropped = new_fit_id(), new_fit_id()
    with artifacts.staged_spec(kept, spec()) as staged:
        assert not fit_file(artifacts, kept, "spec.json").exists()
        staged.publish()
    with artifacts.staged_spec(dropped, spec()):
        pass
    assert artifacts.read_spec(kept) == spec()
    assert not fit_folder(artifacts, dropped).exists()  # nothing left, not even the folder


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    artifacts, fit_id = Artifacts(tmp_path), new_fit_id()
    artifacts.write_json(fit_id, "summary.json", {"v": 1})
    with pytest.raises(RuntimeError), artifacts.atomic_path(fit_id, "summary.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert artifacts.read_json(fit_id, "summary.json") == {"v": 1}
    assert [p.name for p in fit_folder(artifacts, fit_id).iterdir()] == ["summary.json"]
