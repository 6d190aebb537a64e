"""The Celery app and its settings for long, CPU-bound fits.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a fit whose worker dies goes back to
  the queue; the job store counts attempts and fails the fit after ``max_attempts``, so a fit
  that always kills its worker cannot loop forever.
- ``worker_prefetch_multiplier = 1``: a worker holds one fit at a time, others stay queued.
- visibility timeout above the longest allowed fit, so Redis does not redeliver a fit that
  is still running; a run lock with a heartbeat keeps a redelivered message from starting a
  second concurrent run, and the reconciler re-queues fits whose worker died long before
  the visibility timeout would.
- no result backend: job state lives in the service's own Redis records.
"""

from __future__ import annotations

from typing import Any

import psutil
from billiard import pool as billiard_pool
from celery import Celery
from celery.signals import worker_init

from service.core.settings import get_settings

settings = get_settings()


def current_rss_kb() -> int:
    """This process's resident memory now, in KiB."""
    return int(psutil.Process().memory_info().rss // 1024)


# After each task, billiard replaces a pool process above ``worker_max_memory_per_child``,
# but on Linux it reads the process's peak RSS (ru_maxrss): once a fit had peaked above the
# limit (a 100,000-row model does while Bambi builds it), the process was replaced after
# every later task, compiled models and all. The limit is meant for what a process holds
# after a task, so that is what it reads now.
billiard_pool.mem_rss = current_rss_kb

app = Celery("hbm-worker", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=settings.fit_queue,
    # Each fit stops itself at its own time limit; this hard limit is only a backstop.
    task_time_limit=settings.max_fit_time_limit_s + 300,
    broker_transport_options={"visibility_timeout": settings.max_fit_time_limit_s + 600},
    broker_connection_retry_on_startup=True,
    # A pool process keeps the models it compiled (one per structure, see
    # worker.modeling.compiled); it is replaced after many tasks or once it has grown large.
    worker_max_tasks_per_child=settings.tasks_per_child,
    worker_max_memory_per_child=settings.worker_recycle_rss_mb * 1024,
    worker_hijack_root_logger=False,
)


@worker_init.connect
def _warm_up(**_: Any) -> None:
    """Fit workers compile a tiny model before forking their pool (see worker.warmup)."""
    if settings.warm_up:
        import gc

        from worker.warmup import warm_up

        warm_up()
        gc.freeze()  # pool processes inherit these objects; their collections skip them
