"""Files of a fit under the data directory, written atomically (temporary file, then rename).

{data_dir}/fits/{id}/spec.json          the validated request the worker runs
{data_dir}/fits/{id}/posterior.nc       posterior draws and sampler statistics (netCDF)
{data_dir}/fits/{id}/summary.json       results at the default interval, ready to serve
{data_dir}/fits/{id}/groups.json
{data_dir}/fits/{id}/diagnostics.json
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.core.schemas import FitSpec


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
    def atomic_path(self, fit_id: str, name: str) -> Iterator[Path]:
        """A temporary path to write; on success it is renamed to the file ``name``.

        Readers see the old file or the new one, never a partial one.
        """
        folder = self.fit_dir(fit_id)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, folder / name)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def write_bytes(self, fit_id: str, name: str, payload: bytes) -> Path:
        """Write a file atomically."""
        with self.atomic_path(fit_id, name) as tmp, tmp.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        return self.path(fit_id, name)

    def write_json(self, fit_id: str, name: str, value: Any) -> Path:
        """Write JSON atomically."""
        return self.write_bytes(fit_id, name, json.dumps(value).encode())

    def read_json(self, fit_id: str, name: str) -> Any:
        """Read a JSON file of a fit (FileNotFoundError if absent)."""
        return json.loads(self.path(fit_id, name).read_text())

    def write_spec(self, fit_id: str, spec: FitSpec) -> None:
        """Store the validated request."""
        self.write_bytes(fit_id, "spec.json", spec.model_dump_json().encode())

    def read_spec(self, fit_id: str) -> FitSpec:
        """Load the validated request."""
        return FitSpec.model_validate_json(self.path(fit_id, "spec.json").read_bytes())
