"""The reconciler: re-queues fits whose worker died or whose queue message was lost, and
sweeps what fits leave behind. Every API process runs one in a background thread; a Redis
key lets only one of them act per interval.

A fit is re-queued when
- it is ``running`` but its run lock has been missing for ``grace_s`` (two looks at least a
  grace apart): no heartbeat for ``lock_ttl_s`` seconds, so its worker (parent and children)
  is gone. A Redis outage also lets locks lapse; a live run takes its lock back within a
  second of Redis returning, so the grace keeps such runs from being started twice. A lost
  fit is picked up again within about ``lock_ttl_s + grace_s + reconcile_interval_s``;
- it is ``queued`` but no message for it is in the broker (queue or unacknowledged), e.g.
  after Redis lost its queue, or the broker was away when the fit was submitted. RabbitMQ's
  queue cannot be read without consuming it: there, queued fits are sent again only once
  the fit queue holds no ready message (``service.core.broker.fits_in_broker``), so a
  lost message waits for the queue to drain. Re-sent messages are harmless: a fit runs
  under its lock and a finished fit is never run again.

A finished fit's notification (``notify_url``) whose next attempt is overdue by
``REDELIVER_AFTER_S`` is sent again (``resend_notifications``): the scripts that make a fit
final record it as pending in the same atomic step, so no end goes unnotified.

Sweeping works from both sides: fits past their retention whose record expired lose their
files (walking Redis), and fit folders with no record at all (Redis lost its data, or an API
process died between writing a request and recording it) are removed once older than
``ORPHAN_AGE_S`` (walking the storage, every ``FOLDER_SWEEP_INTERVAL_S``).

A fit that a named model uses (any version, current or past: ``service.core.models``) is
exempt from retention: the promotion removed its record's expiry, so it is never "expired"
here; should its record vanish anyway, ``JobStore.delete`` refuses it (the models still name
it) and its files stay. Deleting the model gives its fits a full retention again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.core.artifacts import Artifacts
from service.core.broker import ids_in_broker
from service.core.jobs import JobStore
from service.core.schemas import FitStatus, NotificationStatus
from service.core.webhooks import REDELIVER_AFTER_S

log = logging.getLogger(__name__)

#: A queued fit younger than this is not checked against the broker (its message may be
#: in flight).
QUEUED_GRACE_S = 5.0
#: A fit folder without a record is removed once nothing in it changed for this long.
ORPHAN_AGE_S = 600.0
#: How often the storage is walked for orphans.
FOLDER_SWEEP_INTERVAL_S = 300.0


@dataclass
class Outcome:
    """What one pass did."""

    requeued: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)
    notified: list[str] = field(default_factory=list)


def reconcile_once(
    store: JobStore,
    artifacts: Artifacts,
    enqueue: Callable[[str], None],
    *,
    queue: str,
    retention_s: int,
    grace_s: float = 0.0,
    sweep_folders: bool = False,
    notify: Callable[[str, int], None] | None = None,
    broker: Callable[[str], set[str] | None] | None = None,
    now: float | None = None,
) -> Outcome:
    """One pass over the active fits and the fits past retention (and, with
    ``sweep_folders``, over the storage). ``broker(queue)``: the fit ids the broker
    holds a message for, None when it cannot tell (``service.core.broker.fits_in_broker``;
    default: the Redis lists of ``store``)."""
    now = time.time() if now is None else now
    outcome = Outcome()
    read_broker = broker or (lambda name: ids_in_broker(store.redis, name))
    in_broker: set[str] | None = None
    broker_read = False
    for state in store.active_states():
        fit_id = state.fit_id
        if state.status is None or state.status.is_final:
            store.forget_active(fit_id)
        elif state.status is FitStatus.RUNNING and not state.lock_held:
            if store.requeue(fit_id, grace_s, now=now):
                log.warning("fit %s lost its worker; re-queueing it", fit_id)
                enqueue(fit_id)
                outcome.requeued.append(fit_id)
        elif (
            state.status is FitStatus.QUEUED
            and now - state.created_at > QUEUED_GRACE_S
            and not state.lock_held
        ):
            if not broker_read:
                in_broker, broker_read = read_broker(queue), True
            if in_broker is None or fit_id in in_broker:
                continue
            log.warning("fit %s had no queue message; sending it again", fit_id)
            enqueue(fit_id)
            outcome.resent.append(fit_id)
    for fit_id in store.created_before(now - retention_s):
        if store.status(fit_id) is None:  # the record expired: its files go too
            if store.delete(fit_id):  # unless a named model uses the fit (see the docstring)
                log.warning("fit %s: its record is gone but named models use it", fit_id)
                continue
            artifacts.delete(fit_id)
            outcome.swept.append(fit_id)
    if sweep_folders:
        outcome.swept += sweep_orphan_folders(store, artifacts, now=now)
    if notify is not None:
        outcome.notified += resend_notifications(store, notify, now=now)
    return outcome


def resend_notifications(
    store: JobStore, notify: Callable[[str, int], None], *, now: float
) -> list[str]:
    """Send again each notification whose next attempt is ``REDELIVER_AFTER_S`` overdue: its
    message was lost with a worker, or the process that ended the fit died before sending
    it. A duplicate is harmless: an attempt is made once (see ``worker.notify``)."""
    resent = []
    for fit_id in store.notifications_due(now - REDELIVER_AFTER_S):
        record = store.get(fit_id)
        notification = record.notification if record is not None else None
        if notification is None or notification.status is not NotificationStatus.PENDING:
            store.drop_notification(fit_id)
            continue
        log.warning("fit %s: its notification is overdue; sending it again", fit_id)
        store.schedule_notification(fit_id, now)
        notify(fit_id, notification.attempts + 1)
        resent.append(fit_id)
    return resent


def sweep_orphan_folders(store: JobStore, artifacts: Artifacts, *, now: float) -> list[str]:
    """Remove fit folders that no record names, once untouched for ``ORPHAN_AGE_S``."""
    candidates = [
        fit_id for fit_id, modified in artifacts.fit_folders() if now - modified > ORPHAN_AGE_S
    ]
    swept = []
    for start in range(0, len(candidates), 500):
        batch = candidates[start : start + 500]
        for fit_id in sorted(set(batch) - store.known(batch)):
            log.warning("fit folder %s has no record; removing it", fit_id)
            artifacts.delete(fit_id)
            swept.append(fit_id)
    return swept


class Reconciler:
    """Runs reconciliation passes every ``interval_s`` seconds in a daemon thread; one pass
    in ``FOLDER_SWEEP_INTERVAL_S`` also walks the storage."""

    def __init__(self, step: Callable[..., Outcome], store: JobStore, interval_s: float) -> None:
        self.step = step
        self.store = store
        self.interval_s = interval_s
        self._last_folder_sweep = time.monotonic()
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
                if self.store.take_reconciler_turn(max(1, int(self.interval_s * 0.9))):
                    folders = time.monotonic() - self._last_folder_sweep > FOLDER_SWEEP_INTERVAL_S
                    self.step(sweep_folders=folders)
                    if folders:
                        self._last_folder_sweep = time.monotonic()
            except Exception:  # Redis or the disk away: try again next time
                log.warning("reconciler pass failed", exc_info=True)
