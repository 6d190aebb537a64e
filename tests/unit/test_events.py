"""Where a fit's live events come from: the job store publishes a notice in the same atomic
step as each change of a fit's status or progress, one subscription per API process hands
it to the streams watching that fit, and a stream turns records into ``status``,
``progress`` and ``end`` events numbered by the record's change count. Real Redis; the
end-to-end stream over HTTP is in tests/e2e/test_events.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis import Redis
from sse_starlette import ServerSentEvent

from service.api.events import EventHub, _events, _Stream
from service.core.errors import TooManyRequests
from service.core.jobs import JobStore, new_fit_id
from service.core.schemas import ChainProgress, FitSpec, FitStatus, Progress, ResolvedSampler
from service.core.settings import Settings
from tests.conftest import clean_redis, redis_url

SAMPLER = ResolvedSampler(draws=100, tune=100, chains=2, seed=1, target_accept=0.8, method="nutpie")


@pytest.fixture
def redis() -> Redis:
    return clean_redis(redis_url(14))


@pytest.fixture
def store(redis: Redis) -> JobStore:
    return JobStore(redis, retention_s=3600)


@pytest.fixture
def settings() -> Settings:
    return Settings(redis_url=redis_url(14), max_streams_per_key=2, events_max_s=30)


def new_fit(store: JobStore) -> str:
    fit_id = new_fit_id()
    spec = FitSpec(
        formula="y ~ 1", family="gaussian", link="identity", columns={"y": [1.0]}, sampler=SAMPLER
    )
    assert store.create(fit_id, spec)
    return fit_id


def progress(done: int) -> Progress:
    chains = [ChainProgress(chain=0, draws_done=done, draws_total=200, tuning=False, divergences=0)]
    return Progress(phase="sampling", fraction=done / 200, chains=chains)


def test_every_change_of_status_or_progress_counts_in_the_record(store: JobStore) -> None:
    fit_id = new_fit(store)
    assert store.get_versioned(fit_id)[1] == 0
    store.start_attempt(fit_id)
    store.set_progress(fit_id, progress(50))
    store.set_progress(fit_id, progress(100))
    store.request_cancel(fit_id)  # running: only flagged, not a change of state
    assert store.get_versioned(fit_id)[1] == 3
    assert store.finish(fit_id, FitStatus.SUCCEEDED) is FitStatus.CANCELLED
    record, number = store.get_versioned(fit_id)
    assert record is not None and (record.status, number) == (FitStatus.CANCELLED, 4)


def test_the_notices_carry_the_new_numbers_on_the_fits_channel(
    redis: Redis, store: JobStore
) -> None:
    pubsub = redis.pubsub()
    pubsub.psubscribe(store.events_pattern)
    pubsub.get_message(timeout=1)
    fit_id, other = new_fit(store), new_fit(store)
    store.start_attempt(fit_id)
    store.set_progress(fit_id, progress(10))
    assert store.requeue(fit_id, grace_s=0)  # lost its worker (no lock held)
    store.refresh_lock(fit_id, "run-2", 30)  # queued -> running again, by its heartbeat
    store.finish(fit_id, FitStatus.SUCCEEDED, token="run-2")
    store.request_cancel(other)
    store.delete(other)
    seen = []
    while message := pubsub.get_message(timeout=0.5):
        seen.append((message["channel"].decode(), int(message["data"])))
    pubsub.close()
    channel, channel_other = store.events_channel(fit_id), store.events_channel(other)
    assert seen == [(channel, n) for n in range(1, 6)] + [(channel_other, 1), (channel_other, 0)]
    assert store.fit_of_channel(channel) == fit_id


def test_progress_never_recreates_a_deleted_record(store: JobStore) -> None:
    fit_id = new_fit(store)
    store.delete(fit_id)
    store.set_progress(fit_id, progress(10))
    assert not store.redis.exists(f"hbm:fit:{fit_id}")


def test_a_key_holds_at_most_its_number_of_streams(settings: Settings, store: JobStore) -> None:
    hub = EventHub(settings, store)
    hub.open_stream("a")
    hub.open_stream("a")
    with pytest.raises(TooManyRequests):
        hub.open_stream("a")
    hub.open_stream("b")  # another key has its own
    hub.close_stream("a")
    hub.open_stream("a")


def test_one_subscription_hands_each_notice_to_the_streams_of_that_fit_only(
    settings: Settings, store: JobStore
) -> None:
    fit_id, other = new_fit(store), new_fit(store)

    async def scenario() -> tuple[int, int, int]:
        hub = EventHub(settings, store)
        first, second = await hub.watch(fit_id), await hub.watch(fit_id)
        elsewhere = await hub.watch(other)
        await asyncio.to_thread(store.start_attempt, fit_id)
        for _ in range(3):  # three changes while nobody reads: one pending notice
            await asyncio.to_thread(store.set_progress, fit_id, progress(10))
        await asyncio.wait_for(first.get(), 5)
        await asyncio.wait_for(second.get(), 5)
        pending = first.qsize() + second.qsize()
        hub.unwatch(fit_id, first)
        hub.unwatch(fit_id, second)
        hub.unwatch(other, elsewhere)
        watched = len(hub.watchers)
        await hub.close()
        return pending, elsewhere.qsize(), watched

    assert asyncio.run(scenario()) == (0, 0, 0)


def test_a_stream_says_status_then_progress_then_end_and_closes(
    settings: Settings, store: JobStore
) -> None:
    fit_id = new_fit(store)

    async def scenario() -> list[ServerSentEvent]:
        hub = EventHub(settings, store)
        stream = _Stream(hub, "", fit_id)
        await stream.open()
        record, number = store.get_versioned(fit_id)
        events: list[ServerSentEvent] = []

        async def read() -> None:
            async for event in _events(stream, store, record, number, -1, settings):
                events.append(event)

        reader = asyncio.create_task(read())
        while not events:  # the state at connection first
            await asyncio.sleep(0.01)
        steps: list[Any] = [
            lambda: store.start_attempt(fit_id),
            lambda: store.set_progress(fit_id, progress(50)),
            lambda: store.set_progress(fit_id, progress(150)),
            lambda: store.finish(fit_id, FitStatus.SUCCEEDED),
        ]
        for step in steps:
            seen = len(events)
            await asyncio.to_thread(step)
            while len(events) == seen:  # each change is read before the next one
                await asyncio.sleep(0.01)
        await asyncio.wait_for(reader, 5)
        assert stream.closed and hub.streams == {} and hub.watchers == {}
        await hub.close()
        return events

    events = asyncio.run(scenario())
    assert [(e.event, e.id) for e in events] == [
        ("status", "0"),
        ("status", "1"),
        ("progress", "2"),
        ("progress", "3"),
        ("end", "4"),
    ]
    assert [e.id for e in events] == ["0", "1", "2", "3", "4"]
    fits = [json.loads(str(e.data)) for e in events]
    assert [f["status"] for f in fits] == ["queued", "running", "running", "running", "succeeded"]
    done = [f["progress"]["chains"][0]["draws_done"] for f in fits[2:4]]
    assert done == [50, 150]
    assert fits[-1]["links"]["report"] == f"/v1/fits/{fit_id}/report"


def test_a_reconnecting_client_gets_only_what_is_newer_and_a_final_fit_its_end(
    settings: Settings, store: JobStore
) -> None:
    fit_id = new_fit(store)
    store.start_attempt(fit_id)  # event 1

    async def first_events(last_id: int) -> list[str | None]:
        hub = EventHub(settings, store)
        stream = _Stream(hub, "", fit_id)
        await stream.open()
        record, number = store.get_versioned(fit_id)
        events = _events(stream, store, record, number, last_id, settings)
        try:
            first = await asyncio.wait_for(anext(events), 0.5)
            return [first.event, first.id]
        except TimeoutError:
            return []  # nothing newer: the stream waits
        finally:
            await events.aclose()
            await hub.close()

    assert asyncio.run(first_events(0)) == ["status", "1"]
    assert asyncio.run(first_events(1)) == []
    store.finish(fit_id, FitStatus.FAILED)
    assert asyncio.run(first_events(2)) == ["end", "2"]  # final: always one end


def test_a_lost_subscription_is_taken_again_and_wakes_every_stream(
    settings: Settings, store: JobStore, redis: Redis
) -> None:
    fit_id = new_fit(store)

    async def scenario() -> bool:
        hub = EventHub(settings, store)
        queue = await hub.watch(fit_id)
        assert queue.empty()
        await asyncio.to_thread(redis.client_kill_filter, _type="pubsub")
        # Whatever changed meanwhile, the stream is told to read again...
        await asyncio.wait_for(queue.get(), 10)
        # ...and the new subscription hands on the next change.
        while not hub._ready or not hub._ready.is_set():
            await asyncio.sleep(0.01)
        await asyncio.to_thread(store.start_attempt, fit_id)
        await asyncio.wait_for(queue.get(), 10)
        await hub.close()
        return True

    assert asyncio.run(scenario())
