"""The heartbeat of a running fit: refreshes its run lock from a background thread, so the
lock outlives a long compile or sampling phase and expires soon after the worker dies.

A Redis outage must not cost a live run its fit: after a failed beat the heartbeat tries
again every ``RETRY_S`` instead of waiting a whole beat, and a lock that lapsed while Redis
was away is taken back if no other run took it (the reconciler waits a grace period before
handing a lock-less fit to a new run; see ``JobStore.requeue``).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Self

from service.core.jobs import JobStore, Refresh
from worker.resilience import REDIS_DOWN

log = logging.getLogger(__name__)

#: Seconds between tries while Redis does not answer.
RETRY_S = 0.5


class BackgroundThread:
    """Context manager: ``run()`` in a daemon thread while inside the block; ``_stop`` is
    set when the block ends (the thread waits on it between its steps)."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)

    def run(self) -> None:
        """What the thread does until ``_stop`` is set."""
        raise NotImplementedError

    def __enter__(self) -> Self:
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


class Heartbeat(BackgroundThread):
    """Context manager: refresh ``fit_id``'s lock every ``ttl_s / 3`` seconds while inside.

    If another run took the fit (or it was made final elsewhere), ``lost`` is set and the
    run must stop without writing results.
    """

    def __init__(self, store: JobStore, fit_id: str, token: str, ttl_s: int) -> None:
        super().__init__(f"heartbeat-{fit_id}")
        self.store = store
        self.fit_id = fit_id
        self.token = token
        self.ttl_s = ttl_s
        self.lost = threading.Event()

    def run(self) -> None:
        wait = self.ttl_s / 3
        while not self._stop.wait(wait):
            try:
                outcome = self.store.refresh_lock(self.fit_id, self.token, self.ttl_s)
            except REDIS_DOWN:
                log.warning("fit %s: heartbeat could not reach Redis; retrying", self.fit_id)
                wait = RETRY_S
                continue
            wait = self.ttl_s / 3
            if outcome is Refresh.RETAKEN:
                log.warning("fit %s: run lock had lapsed; taken back", self.fit_id)
            elif outcome is Refresh.LOST:
                log.warning("fit %s: run lock lost; this run stops", self.fit_id)
                self.lost.set()
                return
