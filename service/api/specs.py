"""The validated requests of recent fits, kept in the API process.

A prediction checks its new rows against the fit's request (its columns' types and the
values its transforms saw in training), and a comparison checks that its fits saw the same
rows: both read the stored request, which holds the whole training data. Read each time,
a 100,000-row request was parsed for every prediction, and on S3 downloaded. A fit's
request never changes and its id is never reused, so the requests of recently used fits
are kept, by id and revision (the revision keeps a stale entry from answering for anything
else), up to ``max_cells`` data values in all (least recently used first out); a request
larger than that is read each time. Ownership and status are checked before, by the
caller (``Caller.succeeded``), never here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from service.core.artifacts import Artifacts
from service.core.schemas import FitSpec

#: Data values kept in all (a value costs about 32 bytes in a Python list).
MAX_CELLS = 1_000_000


class SpecCache:
    """Recently used fits' requests, bounded by their number of data values."""

    def __init__(self, artifacts: Artifacts, max_cells: int = MAX_CELLS) -> None:
        self.artifacts = artifacts
        self.max_cells = max_cells
        self._entries: OrderedDict[tuple[str, str], tuple[FitSpec, int]] = OrderedDict()
        self._cells = 0
        self._lock = threading.Lock()

    def get(self, fit_id: str, revision: str) -> FitSpec:
        """The fit's request, from memory when it was read recently."""
        key = (fit_id, revision)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry[0]
        spec = self.artifacts.read_spec(fit_id)
        cells = sum(len(values) for values in spec.columns.values())
        if cells <= self.max_cells:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = (spec, cells)
                    self._cells += cells
                while self._cells > self.max_cells:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._cells -= dropped
        return spec

    def __len__(self) -> int:
        return len(self._entries)
