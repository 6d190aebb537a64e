"""The heartbeat of a running fit: refreshes its run lock from a background thread, so the
lock outlives a long compile or sampling phase and expires soon after the worker dies."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from service.core.jobs import JobStore

log = logging.getLogger(__name__)


class Heartbeat:
    """Context manager: refresh ``fit_id``'s lock every ``ttl_s / 3`` seconds while inside.

    If the lock was lost (Redis away longer than its TTL, so the reconciler may have handed
    the fit to another run), ``lost`` is set and the run must stop without writing results.
    """

    def __init__(self, store: JobStore, fit_id: str, token: str, ttl_s: int) -> None:
        self.store = store
        self.fit_id = fit_id
        self.token = token
        self.ttl_s = ttl_s
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{fit_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.store.refresh_lock(self.fit_id, self.token, self.ttl_s):
                    log.warning("fit %s: run lock lost; this run stops", self.fit_id)
                    self.lost.set()
            except Exception:  # Redis away for a moment: try again at the next beat
                log.warning("fit %s: heartbeat failed", self.fit_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
