"""The Celery producer: sends tasks by name, never importing the worker.

``call`` is a synchronous request to a worker (predictions, summaries at a non-default
interval): it sends the task with a reply token and blocks on the reply list in Redis.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from celery import Celery

from service.core import tasks
from service.core.errors import FieldError, InvalidRequest, NotFound, ServiceError, Unavailable
from service.core.jobs import JobStore
from service.core.settings import Settings


class Dispatcher:
    """Sends fits and synchronous calls to the workers."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.celery = Celery("hbm-api", broker=settings.redis_url)
        self.celery.conf.update(
            task_default_queue=settings.fit_queue,
            broker_connection_retry_on_startup=True,
            broker_transport_options={"visibility_timeout": settings.max_fit_time_limit_s + 600},
        )

    def enqueue_fit(self, fit_id: str) -> None:
        """Queue a fit; the worker finds everything else in the job store and artifacts."""
        self.celery.send_task(tasks.FIT, args=[fit_id], queue=self.settings.fit_queue)

    def call(self, name: str, payload: dict[str, Any]) -> Any:
        """Run ``name`` on a worker and return its answer, or raise the error it reports."""
        token = uuid.uuid4().hex
        key = self.store.reply_key(token)
        self.celery.send_task(
            name,
            args=[payload, key],
            queue=self.settings.interactive_queue,
            expires=self.settings.reply_timeout_s,
        )
        reply = self.store.redis.blpop([key], timeout=self.settings.reply_timeout_s)
        if reply is None:
            raise Unavailable("no worker answered in time; retry shortly", retry_after=10)
        message = json.loads(reply[1])
        if "ok" in message:
            return message["ok"]
        raise _error_from_reply(message["error"])


def _error_from_reply(error: dict[str, Any]) -> ServiceError:
    status = error.get("status")
    if status == 422:
        return InvalidRequest([FieldError(e["field"], e["message"]) for e in error["errors"]])
    if status == 404:
        return NotFound(error["detail"])
    return Unavailable(error.get("detail", "the worker could not answer"))
