"""Files of a fit, written atomically, in the storage ``HBM_STORAGE_URL`` names (a local
folder, the default, or an S3-compatible bucket: ``service.core.storage``).

fits/{id}/spec.json          the validated request the worker runs
fits/{id}/posterior.nc       posterior draws and sampler statistics (netCDF)
fits/{id}/summary.json       results at the default interval, ready to serve
fits/{id}/groups.json        which file holds each factor's group effects:
fits/{id}/group-{i}.json     one factor's group effects at the default interval
fits/{id}/factors.json       the grouping factors, their levels and terms
fits/{id}/diagnostics.json
fits/{id}/priors.json
fits/{id}/results.json       written last: the manifest saying the results are complete (a
                             re-run of a fit finds them and finishes)
fits/{id}/loo-pointwise.npy  computed on first request, after the fit: each row's PSIS-LOO
fits/{id}/loo.json           values (and LOO-PIT), then the resource served
fits/{id}/plot-*.png|svg     plots and draws exports, written on request (``FileCall``)
fits/{id}/draws-*.nc|csv|parquet

A reader finds the old file or the whole new one, never a part (see ``storage``). Failures
to write or remove become ``StorageError`` (``full`` when the disk is full); a file that
exists but cannot be read back (truncated, damaged) becomes ``DamagedResults``, a permanent
error for that fit, never a retry loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.core.errors import DamagedResults, StorageError
from service.core.jobs import is_fit_id
from service.core.schemas import FitSpec
from service.core.storage import LocalStorage, Storage, storage_error

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
FITS = "fits"

__all__ = ["Artifacts", "StagedFile", "group_file", "storage_error"]


def group_file(index: int) -> str:
    """The file of the ``index``-th grouping factor's effects."""
    return f"group-{index}.json"


class Artifacts:
    """A fit's files: atomic reads and writes by fit id and name, in one ``Storage``."""

    def __init__(self, storage: Storage | Path) -> None:
        self.storage = storage if isinstance(storage, Storage) else LocalStorage(storage)

    @staticmethod
    def _folder(fit_id: str) -> str:
        return f"{FITS}/{fit_id}"

    def _key(self, fit_id: str, name: str) -> str:
        return f"{FITS}/{fit_id}/{name}"

    def has_fit(self, fit_id: str) -> bool:
        """Whether any file of the fit is stored."""
        return self.storage.has_folder(self._folder(fit_id))

    @contextmanager
    def atomic_path(self, fit_id: str, name: str, *, create: bool = True) -> Iterator[Path]:
        """A local temporary path to write; on success it is published as ``name``.

        Readers see the old file or the new one, never a partial one. Without ``create``,
        a fit without files (deleted meanwhile) is a FileNotFoundError.
        """
        if not create and not self.has_fit(fit_id):
            raise FileNotFoundError(f"fit {fit_id} has no files")
        with self.storage.staged(self._key(fit_id, name)) as tmp:
            yield tmp

    def write_bytes(self, fit_id: str, name: str, payload: bytes | memoryview) -> None:
        """Write a file atomically."""
        self.storage.put(self._key(fit_id, name), payload)

    def write_derived(self, fit_id: str, name: str, payload: bytes) -> None:
        """Store a result computed after the fit (LOO...) beside its results, atomically;
        FileNotFoundError if the fit's files are gone (deleted while it was computed)."""
        if not self.has_fit(fit_id):
            raise FileNotFoundError(f"fit {fit_id} has no files")
        self.storage.put(self._key(fit_id, name), payload)

    def write_json(self, fit_id: str, name: str, value: Any) -> None:
        """Write JSON atomically."""
        self.write_bytes(fit_id, name, json.dumps(value).encode())

    def read_bytes(self, fit_id: str, name: str) -> bytes:
        """A file of a fit (FileNotFoundError if absent; StorageError if unreadable)."""
        return self.storage.get(self._key(fit_id, name))

    def exists(self, fit_id: str, name: str) -> bool:
        """Whether the fit's file ``name`` is stored."""
        return self.storage.exists(self._key(fit_id, name))

    def size(self, fit_id: str, name: str) -> int:
        """The size of a stored file in bytes (FileNotFoundError if absent)."""
        return self.storage.size(self._key(fit_id, name))

    def open_stream(
        self, fit_id: str, name: str, chunk_bytes: int = 1 << 20
    ) -> tuple[int, Iterator[bytes]]:
        """A file's size and its bytes in chunks, for serving without holding it in memory
        (FileNotFoundError at once if absent)."""
        return self.storage.open_stream(self._key(fit_id, name), chunk_bytes)

    @contextmanager
    def local_copy(self, fit_id: str, name: str) -> Iterator[Path]:
        """A local file with the stored file's bytes, for libraries that open paths."""
        with self.storage.local_copy(self._key(fit_id, name)) as path:
            yield path

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
        """The request ready to store; ``publish()`` writes it (atomically). Unpublished,
        nothing is stored when the block ends."""
        payload = spec.model_dump_json().encode()

        def write() -> None:
            try:
                self.storage.put(self._key(fit_id, SPEC_FILE), payload)
            except StorageError as exc:
                reason = "the disk is full" if exc.full else "the storage failed"
                raise StorageError(
                    f"the request could not be stored: {reason}", full=exc.full
                ) from exc

        yield StagedFile(write)

    def read_spec(self, fit_id: str) -> FitSpec:
        """Load the validated request."""
        try:
            return FitSpec.model_validate_json(self.read_bytes(fit_id, SPEC_FILE))
        except ValidationError as exc:
            raise self.damaged(fit_id, SPEC_FILE) from exc

    def delete(self, fit_id: str) -> None:
        """Remove every file of a fit; a fit without files is fine. StorageError if
        something stays."""
        self.storage.remove_folder(self._folder(fit_id))

    def discard_results(self, fit_id: str) -> None:
        """Remove a fit's results (not its request): a cancelled or failed fit keeps none."""
        for name in self.storage.names(self._folder(fit_id)):
            if name != SPEC_FILE:
                self.storage.remove(self._key(fit_id, name))

    def writable(self) -> bool:
        """Whether a file can be written and removed in the storage now."""
        return self.storage.writable()

    def fit_folders(self) -> Iterator[tuple[str, float]]:
        """Every fit with files (or stray entry with a fit id's name) and when it last
        changed."""
        for name, modified in self.storage.folders(FITS):
            if is_fit_id(name):
                yield name, modified


class StagedFile:
    """A file waiting to be written: ``publish()`` writes it."""

    def __init__(self, write: Callable[[], None]) -> None:
        self._write = write
        self.published = False

    def publish(self) -> None:
        """Write the file (StorageError if it cannot be)."""
        self._write()
        self.published = True
