"""The Celery app and its settings for long, CPU-bound fits.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a fit whose worker dies goes back to
  the queue; the job store counts attempts and fails the fit after ``max_attempts``, so a fit
  that always kills its worker cannot loop forever.
- ``worker_prefetch_multiplier = 1``: a worker holds one fit at a time, others stay queued.
- visibility timeout above the longest allowed fit, so Redis does not redeliver a fit that
  is still running; hard and soft time limits per fit.
- no result backend: job state lives in the service's own Redis records.
"""

from __future__ import annotations

from celery import Celery

from service.core.settings import get_settings

settings = get_settings()

app = Celery("hbm-worker", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=settings.fit_queue,
    task_soft_time_limit=settings.fit_time_limit_s,
    task_time_limit=settings.fit_time_limit_s + 60,
    broker_transport_options={"visibility_timeout": settings.fit_time_limit_s + 600},
    broker_connection_retry_on_startup=True,
    worker_max_tasks_per_child=100,
    worker_hijack_root_logger=False,
)
