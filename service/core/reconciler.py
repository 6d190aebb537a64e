"""The reconciler: re-queues fits whose worker died or whose queue message was lost, and
sweeps the files of fits past their retention. Every API process runs one in a background
thread; a Redis lock lets only one of them act per interval.

A fit is re-queued when
- it is ``running`` but its run lock has expired: no heartbeat for ``lock_ttl_s`` seconds,
  so its worker (parent and children) is gone. It is picked up again within about
  ``lock_ttl_s + reconcile_interval_s`` seconds instead of Redis's visibility timeout;
- it is ``queued`` but no message for it is in the broker (queue or unacknowledged), e.g.
  after Redis lost its queue. Re-sent messages are harmless: a fit runs under its lock and
  a finished fit is never run again.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from service.core.artifacts import Artifacts
from service.core.jobs import JobStore
from service.core.schemas import FitStatus

log = logging.getLogger(__name__)

#: A queued fit younger than this is not checked against the broker (its message may be
#: in flight).
QUEUED_GRACE_S = 5.0


@dataclass
class Outcome:
    """What one pass did."""

    requeued: list[str]
    resent: list[str]
    swept: list[str]


#: A fit id (``new_fit_id``: 32 hex digits) as it appears in a Celery message's headers.
FIT_ID_IN_MESSAGE = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def ids_in_broker(broker: Redis, queue: str) -> set[str]:
    """Every fit id the broker holds a message for on ``queue`` (queued, or delivered and
    unacked), read in one pass: a set, so that checking a thousand queued fits costs a
    thousand lookups, not a thousand searches through every message."""
    queued = broker.lrange(queue, 0, -1)
    unacked = broker.hvals("unacked")
    messages = b"\n".join([*queued, *unacked])  # type: ignore[list-item]
    return {match.decode() for match in FIT_ID_IN_MESSAGE.findall(messages)}


def reconcile_once(
    store: JobStore,
    artifacts: Artifacts,
    enqueue: Callable[[str], None],
    *,
    queue: str,
    retention_s: int,
    now: float | None = None,
) -> Outcome:
    """One pass over the active fits and the fits past retention."""
    now = time.time() if now is None else now
    outcome = Outcome([], [], [])
    in_broker: set[str] | None = None
    for state in store.active_states():
        fit_id = state.fit_id
        if state.status is None or state.status.is_final:
            store.forget_active(fit_id)
        elif state.status is FitStatus.RUNNING and not state.lock_held:
            if store.requeue(fit_id):
                log.warning("fit %s lost its worker; re-queueing it", fit_id)
                enqueue(fit_id)
                outcome.requeued.append(fit_id)
        elif (
            state.status is FitStatus.QUEUED
            and now - state.created_at > QUEUED_GRACE_S
            and not state.lock_held
        ):
            if in_broker is None:
                in_broker = ids_in_broker(store.redis, queue)
            if fit_id in in_broker:
                continue
            log.warning("fit %s had no queue message; sending it again", fit_id)
            enqueue(fit_id)
            outcome.resent.append(fit_id)
    for fit_id in store.created_before(now - retention_s):
        if store.status(fit_id) is None:  # the record expired: its files go too
            shutil.rmtree(artifacts.fit_dir(fit_id), ignore_errors=True)
            store.delete(fit_id)
            outcome.swept.append(fit_id)
    return outcome


class Reconciler:
    """Runs ``reconcile_once`` every ``interval_s`` seconds in a daemon thread."""

    def __init__(self, step: Callable[[], Outcome], redis: Redis, interval_s: float) -> None:
        self.step = step
        self.redis = redis
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                ttl = max(1, int(self.interval_s * 0.9))
                if self.redis.set("hbm:reconciler", "1", nx=True, ex=ttl):
                    self.step()
            except Exception:  # Redis away: try again next time
                log.warning("reconciler pass failed", exc_info=True)
