"""Files of a fit under the data directory, written atomically and durably.

{data_dir}/fits/{id}/spec.json          the validated request the worker runs
{data_dir}/fits/{id}/posterior.nc       posterior draws and sampler statistics (netCDF)
{data_dir}/fits/{id}/summary.json       results at the default interval, ready to serve
{data_dir}/fits/{id}/groups.json         which file holds each factor's group effects:
{data_dir}/fits/{id}/group-{i}.json      one factor's group effects at the default interval
{data_dir}/fits/{id}/factors.json        the grouping factors, their levels and terms
{data_dir}/fits/{id}/diagnostics.json
{data_dir}/fits/{id}/priors.json
{data_dir}/fits/{id}/results.json       written last: the manifest saying the results are
                                        complete (a re-run of a fit finds them and finishes)
{data_dir}/fits/{id}/loo-pointwise.npy  computed on first request, after the fit: each row's
{data_dir}/fits/{id}/loo.json           PSIS-LOO values, then the resource served

Every file is written to a temporary name, flushed to disk (fsync), renamed into place, and
the folder is flushed too: after a crash a reader finds the old file or the whole new one.
Failures to write or remove become ``StorageError`` (``full`` when the disk is full); a file
that exists but cannot be read back (truncated, damaged) becomes ``DamagedResults``, a
permanent error for that fit, never a retry loop.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.core.errors import DamagedResults, StorageError
from service.core.jobs import is_fit_id
from service.core.schemas import FitSpec

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
SUMMARY_FILE = "summary.json"
GROUPS_FILE = "groups.json"
FACTORS_FILE = "factors.json"
DIAGNOSTICS_FILE = "diagnostics.json"
PRIORS_FILE = "priors.json"
MANIFEST_FILE = "results.json"
LOO_FILE = "loo.json"
LOO_POINTWISE_FILE = "loo-pointwise.npy"


def group_file(index: int) -> str:
    """The file of the ``index``-th grouping factor's effects."""
    return f"group-{index}.json"


_FULL = {errno.ENOSPC, errno.EDQUOT}


def storage_error(exc: OSError, what: str) -> StorageError:
    """A StorageError in the service's words for an OSError while doing ``what``."""
    full = exc.errno in _FULL
    reason = "the disk is full" if full else "the storage failed"
    return StorageError(f"{what}: {reason}", full=full)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Artifacts:
    """Paths and atomic reads and writes of a fit's files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fit_dir(self, fit_id: str) -> Path:
        """The folder of one fit."""
        return self.root / "fits" / fit_id

    def path(self, fit_id: str, name: str) -> Path:
        """One file of a fit."""
        return self.fit_dir(fit_id) / name

    @contextmanager
    def atomic_path(self, fit_id: str, name: str, *, create: bool = True) -> Iterator[Path]:
        """A temporary path to write; on success it is flushed and renamed to ``name``.

        Readers see the old file or the new one, never a partial one. Without ``create``,
        a fit without a folder (deleted meanwhile) is a FileNotFoundError.
        """
        folder = self.fit_dir(fit_id)
        if not create and not folder.is_dir():
            raise FileNotFoundError(f"fit {fit_id} has no folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
        except OSError as exc:
            raise storage_error(exc, f"the fit's file {name} could not be written") from exc
        try:
            yield Path(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, folder / name)
            _fsync_folder(folder)
        except OSError as exc:
            raise storage_error(exc, f"the fit's file {name} could not be written") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)

    def write_bytes(self, fit_id: str, name: str, payload: bytes | memoryview) -> Path:
        """Write a file atomically."""
        with self.atomic_path(fit_id, name) as tmp, tmp.open("wb") as handle:
            handle.write(payload)
        return self.path(fit_id, name)

    def write_derived(self, fit_id: str, name: str, payload: bytes) -> None:
        """Store a result computed after the fit (LOO...) beside its results, atomically;
        FileNotFoundError if the fit's folder is gone (deleted while it was computed)."""
        with self.atomic_path(fit_id, name, create=False) as tmp, tmp.open("wb") as handle:
            handle.write(payload)

    def write_json(self, fit_id: str, name: str, value: Any) -> Path:
        """Write JSON atomically."""
        return self.write_bytes(fit_id, name, json.dumps(value).encode())

    def read_bytes(self, fit_id: str, name: str) -> bytes:
        """A file of a fit (FileNotFoundError if absent; StorageError if unreadable)."""
        try:
            return self.path(fit_id, name).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise storage_error(exc, f"the fit's file {name} could not be read") from exc

    def open_stream(
        self, fit_id: str, name: str, chunk_bytes: int = 1 << 20
    ) -> tuple[int, Iterator[bytes]]:
        """A file's size and its bytes in chunks, for serving without holding it in memory
        (FileNotFoundError at once if absent; the file is open until the chunks end)."""
        try:
            handle = self.path(fit_id, name).open("rb")
            size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise storage_error(exc, f"the fit's file {name} could not be read") from exc

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(chunk_bytes):
                    yield chunk

        return size, chunks()

    def read_json(self, fit_id: str, name: str) -> Any:
        """Read a JSON file of a fit (FileNotFoundError if absent, DamagedResults if it
        does not parse)."""
        try:
            return json.loads(self.read_bytes(fit_id, name))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self.damaged(fit_id, name) from exc

    def read_result(self, fit_id: str, name: str) -> bytes:
        """A result file of a fit, checked against the SHA-256 its manifest recorded
        (DamagedResults if it differs): served as it is, it is never parsed."""
        payload = self.read_bytes(fit_id, name)
        try:
            manifest = self.read_json(fit_id, MANIFEST_FILE)
        except FileNotFoundError:
            manifest = {}
        expected = (manifest.get("files") or {}).get(name)
        if expected is None:  # no digest recorded: at least the JSON must parse
            self.read_json(fit_id, name)
        elif hashlib.sha256(payload).hexdigest() != expected:
            raise self.damaged(fit_id, name)
        return payload

    def damaged(self, fit_id: str, name: str) -> DamagedResults:
        """The error for a stored file that cannot be read back (and log it)."""
        log.error("fit %s: the stored file %s is damaged", fit_id, name)
        return DamagedResults(
            f"the fit's stored {name.split('.')[0]} is damaged and cannot be read; "
            "fit the model again"
        )

    def write_spec(self, fit_id: str, spec: FitSpec) -> None:
        """Store the validated request."""
        self.write_bytes(fit_id, SPEC_FILE, spec.model_dump_json().encode())

    @contextmanager
    def staged_spec(self, fit_id: str, spec: FitSpec) -> Iterator[StagedFile]:
        """Write the request under a temporary name; ``publish()`` renames it into place.
        Unpublished, it is removed when the block ends."""
        folder = self.fit_dir(fit_id)
        tmp = ""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".spec.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(spec.model_dump_json().encode())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            self._remove_if_empty(folder)
            raise storage_error(exc, "the request could not be stored") from exc
        staged = StagedFile(Path(tmp), folder / SPEC_FILE)
        try:
            yield staged
        finally:
            staged.temporary.unlink(missing_ok=True)
            if not staged.published:
                self._remove_if_empty(folder)

    def read_spec(self, fit_id: str) -> FitSpec:
        """Load the validated request."""
        try:
            return FitSpec.model_validate_json(self.read_bytes(fit_id, SPEC_FILE))
        except ValidationError as exc:
            raise self.damaged(fit_id, SPEC_FILE) from exc

    def delete(self, fit_id: str) -> None:
        """Remove every file of a fit (a folder, or whatever stands in its place); a fit
        without files is fine. StorageError if something stays."""
        target = self.fit_dir(fit_id)
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, "the fit's files could not be removed") from exc

    def discard_results(self, fit_id: str) -> None:
        """Remove a fit's results (not its request): a cancelled or failed fit keeps none."""
        folder = self.fit_dir(fit_id)
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name != SPEC_FILE:
                try:
                    entry.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise storage_error(exc, "the fit's results could not be removed") from exc

    def writable(self) -> bool:
        """Whether a file can be written and removed in the data folder now."""
        try:
            (self.root / "fits").mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.root / "fits", prefix=".probe.")
            os.close(fd)
            os.unlink(name)
        except OSError:
            return False
        return True

    def fit_folders(self) -> Iterator[tuple[str, float]]:
        """Every fit folder (or stray entry with a fit id's name) and when it last changed."""
        try:
            entries = list(os.scandir(self.root / "fits"))
        except FileNotFoundError:
            return
        for entry in entries:
            if is_fit_id(entry.name):
                try:
                    yield entry.name, entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue

    @staticmethod
    def _remove_if_empty(folder: Path) -> None:
        with suppress(OSError):
            folder.rmdir()


class StagedFile:
    """A file written under a temporary name, waiting to be renamed into place."""

    def __init__(self, temporary: Path, final: Path) -> None:
        self.temporary = temporary
        self.final = final
        self.published = False

    def publish(self) -> None:
        """Rename the file into place (durably)."""
        try:
            os.replace(self.temporary, self.final)
            _fsync_folder(self.final.parent)
        except OSError as exc:
            raise storage_error(exc, "the request could not be stored") from exc
        self.published = True
