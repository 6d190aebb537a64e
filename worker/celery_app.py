"""The Celery app and its settings for long, CPU-bound fits.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a fit whose worker dies goes back to
  the queue; the job store counts attempts and fails the fit after ``max_attempts``, so a fit
  that always kills its worker cannot loop forever.
- ``worker_prefetch_multiplier = 1``: a worker holds one fit at a time, others stay queued.
- visibility timeout (Redis) or consumer timeout (RabbitMQ) above the longest allowed fit,
  so the broker does not redeliver a fit that is still running (``service.core.broker``,
  which holds every setting that differs between the two); a run lock with a heartbeat
  keeps a redelivered message from starting a second concurrent run, and the reconciler
  re-queues fits whose worker died long before the visibility timeout would. A worker that
  loses its broker connection keeps running its fit (RabbitMQ redelivers the message at
  once; that delivery finds the run lock held and stands down).
- no result backend: job state lives in the service's own Redis records.
- synchronous calls (predictions, results, dry runs) are acknowledged late too: a call
  whose pool process dies goes back to the queue at once; its message expires with the
  API's wait for it.
- every worker announces itself in Redis (``JobStore.announce_worker``) while it consumes,
  so the API answers 503 at once when no worker serves a queue, and can tell a call whose
  worker died from a slow one.
- a Redis outage does not cancel running fits (they finish, see ``worker.resilience``).
- logs: ``HBM_LOG_FORMAT=json`` replaces Celery's format with JSON lines, and every line a
  pool process writes during a task names the task's fit and request (``service.core.logs``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import partial
from typing import Any

from celery import Celery
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_ready,
    worker_shutting_down,
)

from service.core import logs
from service.core.broker import broker_url, celery_options, check_server
from service.core.jobs import JobStore, is_fit_id
from service.core.settings import get_settings
from worker.patches import read_current_rss_in_billiard
from worker.resilience import best_effort

log = logging.getLogger(__name__)

settings = get_settings()


app = Celery("hbm-worker", broker=broker_url(settings), include=["worker.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=settings.fit_queue,
    # Each fit stops itself at its own time limit; this hard limit is only a backstop.
    task_time_limit=settings.max_fit_time_limit_s + 300,
    **celery_options(settings, producer=False),
    broker_connection_retry_on_startup=True,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    # A pool process keeps the models it compiled (one per structure, see
    # worker.modeling.compiled); it is replaced after many tasks or once it has grown large.
    worker_max_tasks_per_child=settings.tasks_per_child,
    worker_max_memory_per_child=settings.worker_recycle_rss_mb * 1024,
    worker_hijack_root_logger=False,
)


if settings.log_format == "json":
    logs.configure("json", "warning")  # now: warnings before Celery sets up logging too

    @setup_logging.connect
    def _json_logs(loglevel: int | str | None = None, **_: Any) -> None:
        """Every line as JSON (``service.core.logs``) instead of Celery's own format."""
        logs.configure("json", loglevel or "info")


@task_prerun.connect
def _bind_logs(task: Any = None, args: Any = None, **_: Any) -> None:
    """Every line the pool process logs for a task names its fit and the API request that
    queued it (the task's header; a fit's run refines it from the fit's record)."""
    first = args[0] if args else None
    fit_id = first.get("fit_id") if isinstance(first, dict) else first
    header = task.request.get(logs.TASK_HEADER) if task is not None else None
    logs.bind_process(
        fit_id=fit_id if isinstance(fit_id, str) and is_fit_id(fit_id) else None,
        request_id=logs.safe_request_id(header),
    )


@task_postrun.connect
def _unbind_logs(**_: Any) -> None:
    logs.bind_process(fit_id=None, request_id=None)


@worker_init.connect
def _warm_up(**_: Any) -> None:
    """Before the pool forks: billiard judges pool processes by the memory they hold (see
    worker.patches), and fit workers compile a tiny model (see worker.warmup)."""
    read_current_rss_in_billiard()
    if settings.warm_up:
        import gc

        from worker.warmup import warm_up

        warm_up()
        gc.freeze()  # pool processes inherit these objects; their collections skip them


class Presence:
    """Announces this worker process on the queues it consumes, every third of
    ``worker_presence_ttl_s``, from a daemon thread of the worker's main process."""

    def __init__(self, queues: list[str]) -> None:
        from worker.context import connect

        self.queues = queues
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.store = JobStore(connect(settings))
        self.ttl_s = settings.worker_presence_ttl_s
        self._stop = threading.Event()
        threading.Thread(target=self._announce, name="presence", daemon=True).start()

    def _announce(self) -> None:
        while True:
            best_effort(self._announce_once, what="announce the worker")
            if self._stop.wait(self.ttl_s / 3):
                return

    def retire(self) -> None:
        """Stop announcing and say so."""
        self._stop.set()
        for queue in self.queues:
            best_effort(partial(self.store.retire_worker, queue, self.name), what="retire")

    def _announce_once(self) -> None:
        for queue in self.queues:
            self.store.announce_worker(queue, self.name, self.ttl_s)


_presence: list[Presence] = []


@worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    queues = [queue.name for queue in sender.task_consumer.queues]
    check_server(sender.connection, settings)  # RabbitMQ: is its consumer timeout honoured?
    _presence.append(Presence(queues))
    log.info("worker announced on %s", queues)


@worker_shutting_down.connect
def _retire(**_: Any) -> None:
    for presence in _presence:
        presence.retire()
