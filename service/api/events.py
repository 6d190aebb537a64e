"""A fit's live progress as Server-Sent Events: ``GET /v1/fits/{id}/events``.

Each event's ``data`` is the fit's resource, as ``GET /v1/fits/{id}`` answers it; its
``event`` is ``status`` (a stream's first event, and each change of status), ``progress``
(per chain: draws done, divergences, warm-up or not; and the phase) or ``end`` (a final
state: the stream closes after it); its ``id`` is the record's event number, which grows
with every change (``JobStore.get_versioned``). A client reconnecting with ``Last-Event-ID``
gets the current state only if it is newer; a fit that is final always answers one ``end``
and closes, so that a browser's ``EventSource`` knows to stop reconnecting.

Where events come from: the job store publishes a notice on ``{prefix}:events:{id}`` in the
same atomic step (Lua) as every change of a fit's status or progress. Each API process holds
ONE pattern subscription (``EventHub``, redis.asyncio) that hands every notice to the queues
of the streams watching that fit; each such stream re-reads the record in a thread. No stream
polls: between notices it waits, and SSE comments every ``HBM_EVENTS_HEARTBEAT_S`` keep the
connection alive through proxies. When the subscription breaks (Redis restarted), the hub
subscribes again and wakes every stream to re-read, so no final state is missed.

Limits: ``HBM_MAX_STREAMS_PER_KEY`` open streams per key and API process (429 beyond), and
every stream closes after ``HBM_EVENTS_MAX_S`` (an ``EventSource`` reconnects by itself with
its ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from service.api.problems import documented
from service.api.security import CallerDep
from service.core.errors import NotFound, TooManyRequests, Unavailable
from service.core.jobs import JobStore, is_fit_id
from service.core.schemas import FitResource, FitStatus
from service.core.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

#: Seconds a new stream waits for the hub's subscription to Redis (then 503).
SUBSCRIBE_TIMEOUT_S = 5.0
#: Longest wait between two attempts to subscribe again after the subscription broke.
MAX_BACKOFF_S = 5.0
#: Seconds a stream has to end by itself when the server stops (then it is cut).
SHUTDOWN_GRACE_S = 1.0

#: What ``GET /events`` answers, for the OpenAPI document.
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `status`, `progress`, then `end` at a final "
        "state; each event's data is the fit resource.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class EventHub:
    """One Redis pattern subscription per API process, fanned out to the streams' queues.

    A stream's queue holds at most one pending notice: a notice only says "read again", so
    notices that arrive while a stream is reading are merged into one."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.watchers: dict[str, set[asyncio.Queue[None]]] = {}
        self.streams: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --------------------------------------------------------------------- streams per key

    def open_stream(self, owner: str) -> None:
        """Count a stream of ``owner``'s; TooManyRequests beyond the limit."""
        limit = self.settings.max_streams_per_key
        if self.streams[owner] >= limit:
            raise TooManyRequests(f"{limit} event streams are already open", retry_after=5)
        self.streams[owner] += 1

    def close_stream(self, owner: str) -> None:
        """A stream of ``owner``'s closed."""
        self.streams[owner] -= 1
        if self.streams[owner] <= 0:
            del self.streams[owner]

    # ------------------------------------------------------------------------- watching

    async def watch(self, fit_id: str) -> asyncio.Queue[None]:
        """A queue that receives a notice after each change of the fit, from a
        subscription that is live when this returns (503 if Redis does not answer)."""
        ready = self._ensure_listening()
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        self.watchers.setdefault(fit_id, set()).add(queue)
        try:
            await asyncio.wait_for(ready.wait(), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            self.unwatch(fit_id, queue)
            raise Unavailable("the event stream cannot reach Redis", retry_after=5) from None
        return queue

    def unwatch(self, fit_id: str, queue: asyncio.Queue[None]) -> None:
        """Stop handing notices of ``fit_id`` to ``queue``."""
        queues = self.watchers.get(fit_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.watchers[fit_id]

    async def close(self) -> None:
        """Drop the subscription (at the app's shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ----------------------------------------------------------------------- the listener

    def _ensure_listening(self) -> asyncio.Event:
        """Start the subscription on this event loop, once."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._ready = asyncio.Event()
            self._task = loop.create_task(self._listen(self._ready), name="hbm-event-hub")
        assert self._ready is not None
        return self._ready

    async def _listen(self, ready: asyncio.Event) -> None:
        """Subscribe to every fit's channel and hand each notice on; subscribe again after
        a failure (with backoff), waking every stream to re-read what it may have missed."""
        backoff = 0.1
        again = False  # streams read after their first subscription: only later ones wake them
        while True:
            client = AsyncRedis.from_url(
                self.settings.redis_url, socket_connect_timeout=self.settings.redis_timeout_s
            )
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(self.store.events_pattern)
                async for message in pubsub.listen():
                    if message["type"] == "psubscribe":
                        ready.set()
                        backoff = 0.1
                        if again:
                            self._wake(list(self.watchers))
                        again = True
                    elif message["type"] == "pmessage":
                        channel = message["channel"]
                        text = channel.decode() if isinstance(channel, bytes) else str(channel)
                        self._wake([self.store.fit_of_channel(text)])
            except (RedisError, OSError) as exc:
                log.warning("event subscription lost (%s); subscribing again", type(exc).__name__)
            finally:
                ready.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _wake(self, fit_ids: list[str]) -> None:
        """Hand a notice to every stream of these fits (merged with one not yet taken)."""
        for fit_id in fit_ids:
            for queue in self.watchers.get(fit_id, ()):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)


class _Stream:
    """One client's stream of one fit: what it holds (a slot of its key, a queue at the hub),
    released once however the stream ends."""

    def __init__(self, hub: EventHub, owner: str, fit_id: str) -> None:
        self.hub = hub
        self.owner = owner
        self.fit_id = fit_id
        self.queue: asyncio.Queue[None] | None = None
        self.closed = False
        #: Set when the server stops: the stream then ends cleanly.
        self.shutdown = anyio.Event()

    async def open(self) -> None:
        self.hub.open_stream(self.owner)
        try:
            self.queue = await self.hub.watch(self.fit_id)
        except BaseException:
            self.hub.close_stream(self.owner)
            self.closed = True
            raise

    async def next_notice(self, timeout_s: float) -> bool:
        """Wait for the fit's next change: True when one was noticed, False when the
        stream should end (it is ``timeout_s`` old, or the server stops)."""
        assert self.queue is not None
        notice = asyncio.ensure_future(self.queue.get())
        stop = asyncio.ensure_future(self.shutdown.wait())
        try:
            done, _ = await asyncio.wait(
                {notice, stop}, timeout=max(timeout_s, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            notice.cancel()
            stop.cancel()
        return notice in done

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.queue is not None:
                self.hub.unwatch(self.fit_id, self.queue)
            self.hub.close_stream(self.owner)


def _event_number(value: str | None) -> int:
    """The event number a reconnecting client last received (-1: none, or not a number)."""
    if value is not None and value.strip().isdigit() and len(value.strip()) < 19:
        return int(value)
    return -1


@router.get(
    "/fits/{fit_id}/events",
    tags=["fits"],
    response_class=EventSourceResponse,
    responses={**STREAM_RESPONSE, **documented(401, 404, 422, 429, 503)},
)
async def fit_events(
    fit_id: str,
    request: Request,
    caller: CallerDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=40, description="Resume after this event."),
    ] = None,
) -> EventSourceResponse:
    """A fit's live progress as Server-Sent Events: ``status``, ``progress`` per chain while
    it runs, then ``end`` with its final state (the stream then closes). Each event's data is
    the fit resource (as ``GET /v1/fits/{id}``), its id grows with every change."""
    if not is_fit_id(fit_id):
        raise NotFound(f"there is no fit '{fit_id[:64]}'")
    hub: EventHub = request.app.state.events
    store = caller.services.store
    stream = _Stream(hub, caller.owner, fit_id)
    await stream.open()
    try:
        # Read after subscribing: a change from now on is noticed.
        await run_in_threadpool(caller.fit, fit_id)
        record, number = await run_in_threadpool(store.get_versioned, fit_id)
    except BaseException:
        stream.close()
        raise
    settings = caller.settings
    events = _events(stream, store, record, number, _event_number(last_event_id), settings)
    return EventSourceResponse(
        events,
        ping=settings.events_heartbeat_s,
        ping_message_factory=lambda: ServerSentEvent(comment="heartbeat"),
        background=BackgroundTask(stream.close),
        shutdown_event=stream.shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_S,
    )


async def _events(
    stream: _Stream,
    store: JobStore,
    record: FitResource | None,
    number: int,
    last_sent: int,
    settings: Settings,
) -> AsyncIterator[ServerSentEvent]:
    """The events of one stream, until the fit is final (or gone), or the stream is old."""
    deadline = asyncio.get_running_loop().time() + settings.events_max_s
    shown: FitStatus | None = record.status if record and number <= last_sent else None
    try:
        while record is not None:
            final = record.status.is_final
            if final or number > last_sent:
                kind = "end" if final else "progress" if record.status is shown else "status"
                data = record.with_links().model_dump_json()
                yield ServerSentEvent(data=data, event=kind, id=str(number))
                shown, last_sent = record.status, number
            if final:
                return
            left = deadline - asyncio.get_running_loop().time()
            if not await stream.next_notice(left):
                return  # old enough, or the server stops: the client reconnects
            try:
                record, number = await run_in_threadpool(store.get_versioned, stream.fit_id)
            except RedisError:
                log.warning("fit %s: Redis did not answer; its event stream closes", stream.fit_id)
                return
    finally:
        stream.close()
