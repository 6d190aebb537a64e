"""The Celery producer: sends tasks by name, never importing the worker.

``enqueue_fit`` queues a fit (its state lives in the job store). ``call`` sends one of the
calls of ``service.core.protocol`` to an interactive worker (predictions, results at
another interval, the dry run) with a reply token, and waits for the reply in Redis without
holding a thread (an asyncio Redis client, one-second waits); it returns the answer's JSON,
which the route serves as it is. While it waits it watches the worker:

- no live worker serves the queue: 503 with Retry-After at once, nothing sent;
- the worker that took the call (``JobStore.call_key``) stopped announcing itself (it died
  mid-call), or nobody took it and every worker alive when it was sent is gone (one may
  have died with the message fetched): the call is sent once more, to a live worker,
  waiting up to ``ORPHAN_GRACE_S`` for one to come back;
- the broker does not take the call: 503 with Retry-After;
- over ``max_calls_in_flight`` calls waiting in this process, or
  ``max_calls_in_flight_per_key`` for one key: 503 / 429 with Retry-After before sending.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery import Celery
from kombu.exceptions import OperationalError
from redis import asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from service.core.broker import broker_url, celery_options
from service.core.errors import TooManyRequests, Unavailable
from service.core.jobs import JobStore
from service.core.protocol import FIT_TASK, Call, decode_reply
from service.core.settings import Settings
from service.core.webhooks import NOTIFY_TASK

#: Seconds between looks at a pending call's worker.
LOOK_S = 1.0
#: Sends of one call at most (the first, and one after its worker died).
MAX_SENDS = 2
#: How long a call already sent waits for a worker to come back once none is alive (a
#: restarted worker needs 10-20 s to start) before it answers 503.
ORPHAN_GRACE_S = 30.0


class Dispatcher:
    """Sends fits and synchronous calls to the workers."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        timeout = settings.redis_timeout_s
        self.celery = Celery("hbm-api", broker=broker_url(settings))
        self.celery.conf.update(
            task_default_queue=settings.fit_queue,
            broker_connection_retry_on_startup=True,
            broker_connection_timeout=timeout,
            broker_connection_max_retries=1,
            **celery_options(settings, producer=True),
        )
        self._replies: aioredis.Redis | None = None
        self.in_flight = 0
        self.in_flight_by_key: Counter[str] = Counter()

    def enqueue_fit(self, fit_id: str) -> None:
        """Queue a fit; the worker finds everything else in the job store and artifacts."""
        self.celery.send_task(FIT_TASK, args=[fit_id], queue=self.settings.fit_queue)

    def enqueue_notification(self, fit_id: str, attempt: int) -> None:
        """Queue an attempt at a finished fit's notification (``service.core.webhooks``)."""
        queue = self.settings.notify_queue
        self.celery.send_task(NOTIFY_TASK, args=[fit_id, attempt], queue=queue)

    # ----------------------------------------------------------------- synchronous calls

    @property
    def replies(self) -> aioredis.Redis:
        """The asyncio Redis client replies are awaited on (made in the serving loop)."""
        if self._replies is None:
            timeout = self.settings.redis_timeout_s
            self._replies = aioredis.Redis.from_url(
                self.settings.redis_url,
                socket_timeout=LOOK_S + timeout,
                socket_connect_timeout=timeout,
            )
        return self._replies

    @asynccontextmanager
    async def _slot(self, owner: str) -> AsyncIterator[None]:
        settings = self.settings
        if self.in_flight >= settings.max_calls_in_flight:
            raise Unavailable("the workers are busy with other calls; retry shortly", 5)
        if self.in_flight_by_key[owner] >= settings.max_calls_in_flight_per_key:
            raise TooManyRequests(
                f"{settings.max_calls_in_flight_per_key} calls of this key are already waiting "
                "for a worker",
                retry_after=5,
            )
        self.in_flight += 1
        self.in_flight_by_key[owner] += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.in_flight_by_key[owner] -= 1
            if not self.in_flight_by_key[owner]:
                del self.in_flight_by_key[owner]

    async def call(self, call: Call, owner: str = "") -> bytes:
        """Run ``call`` on an interactive worker: its answer's JSON, or the error it met
        raised again."""
        async with self._slot(owner):
            queue = self.settings.interactive_queue
            live = await run_in_threadpool(self.store.live_workers, queue)
            if not live:
                raise Unavailable("no worker is answering calls right now; retry shortly", 10)
            token = uuid.uuid4().hex
            await self._send(call, self.store.reply_key(token))
            raw = await self._await_reply(token, call, queue, live)
        return decode_reply(raw)

    async def _send(self, call: Call, reply_key: str) -> None:
        payload = call.model_dump(mode="json")

        def send() -> None:
            self.celery.send_task(
                call.task,
                args=[payload, reply_key],
                queue=self.settings.interactive_queue,
                expires=self.settings.reply_timeout_s,
            )

        try:
            await run_in_threadpool(send)
        except (OperationalError, OSError) as exc:  # the broker is away
            raise Unavailable("the broker does not answer; retry shortly", 10) from exc

    async def _await_reply(self, token: str, call: Call, queue: str, senders: set[str]) -> bytes:
        """Wait for the reply; send the call again (once) when the worker that took it died,
        or when nobody took it and every worker that could have fetched it is gone (a worker
        that dies with a message fetched keeps it until Redis's visibility timeout; RabbitMQ
        hands it out again at once, and a second answer is ignored)."""
        reply_key = self.store.reply_key(token)
        deadline = time.monotonic() + self.settings.reply_timeout_s
        sends = 1
        alone_since: float | None = None  # since when no worker has been alive
        while time.monotonic() < deadline:
            reply = await self.replies.blpop([reply_key], timeout=LOOK_S)
            if reply is not None:
                raw = reply[1]
                return raw if isinstance(raw, bytes) else raw.encode()
            taker = await self.replies.get(self.store.call_key(token))
            live = await run_in_threadpool(self.store.live_workers, queue)
            if live:
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > ORPHAN_GRACE_S:
                raise Unavailable("the worker stopped answering; retry shortly", 10)
            taken_by = taker.decode() if isinstance(taker, bytes) else taker
            orphaned = taken_by not in live if taken_by is not None else not senders & live
            if live and orphaned and sends < MAX_SENDS:
                sends += 1  # send it to a live worker
                senders = live
                await self.replies.delete(self.store.call_key(token))
                await self._send(call, reply_key)
        raise Unavailable("no worker answered in time; retry shortly", retry_after=10)

    async def close(self) -> None:
        """Close the reply client."""
        if self._replies is not None:
            await self._replies.aclose()
