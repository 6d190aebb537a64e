"""The reconciler re-queues fits whose worker vanished or whose queue message was lost,
and sweeps fits past their retention (real Redis, a recording enqueue)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from redis import Redis

from service.api.reconciler import Outcome, ids_in_broker, reconcile_once
from service.core.artifacts import Artifacts
from service.core.jobs import JobStore, new_fit_id
from service.core.schemas import FitSpec, FitStatus, ResolvedSampler
from tests.conftest import clean_redis, redis_url
from tests.support.files import fit_folder

QUEUE = "hbm.fits"


@pytest.fixture
def redis() -> Redis:
    return clean_redis(redis_url(14))


def spec() -> FitSpec:
    sampler = ResolvedSampler(
        draws=10, tune=10, chains=1, seed=1, target_accept=0.8, method="nutpie"
    )
    return FitSpec(
        formula="y ~ 1", family="gaussian", link="identity", columns={"y": [1.0]}, sampler=sampler
    )


def run(
    store: JobStore, tmp_path: Path, now: float | None = None, retention_s: int = 3600
) -> tuple[Outcome, list[str]]:
    sent: list[str] = []
    outcome = reconcile_once(
        store, Artifacts(tmp_path), sent.append, queue=QUEUE, retention_s=retention_s, now=now
    )
    return outcome, sent


def test_a_running_fit_without_heartbeat_is_requeued(redis: Redis, tmp_path: Path) -> None:
    store = JobStore(redis)
    alive, dead = new_fit_id(), new_fit_id()
    for fit_id in (alive, dead):
        store.create(fit_id, spec())
        store.start_attempt(fit_id)
    store.acquire_lock(alive, "token", ttl_s=30)
    outcome, sent = run(store, tmp_path)
    assert outcome.requeued == [dead] and sent == [dead]
    assert store.status(dead) is FitStatus.QUEUED
    assert store.status(alive) is FitStatus.RUNNING


def test_a_queued_fit_without_a_message_is_sent_again(redis: Redis, tmp_path: Path) -> None:
    store = JobStore(redis)
    orphan, waiting = new_fit_id(), new_fit_id()
    store.create(orphan, spec())
    store.create(waiting, spec())
    redis.lpush(QUEUE, f'{{"headers": {{"argsrepr": "[\'{waiting}\']"}}}}')
    outcome, sent = run(store, tmp_path, now=time.time() + 60)
    assert outcome.resent == sent == [orphan]
    # within the grace period nothing is resent (the message may be in flight)
    assert run(store, tmp_path)[1] == []


def test_final_fits_leave_the_active_set_and_expired_ones_are_swept(
    redis: Redis, tmp_path: Path
) -> None:
    store = JobStore(redis, retention_s=1)
    fit_id = new_fit_id()
    store.create(fit_id, spec())
    Artifacts(tmp_path).write_json(fit_id, "summary.json", {})
    store.finish(fit_id, FitStatus.SUCCEEDED)
    assert store.active_ids() == []
    time.sleep(1.5)  # the record expires after its retention
    outcome, _ = run(store, tmp_path, now=time.time() + 10, retention_s=1)
    assert outcome.swept == [fit_id]
    assert not (tmp_path / "fits" / fit_id).exists()
    assert store.list_ids(0, 10) == []


def test_fit_ids_are_read_from_the_messages_celery_really_sends(redis: Redis) -> None:
    """The reconciler reads fit ids out of Celery's own messages (one pass, not a search
    per fit), and only those: Celery's task and delivery ids are not taken for fits."""
    from service.api.dispatch import Dispatcher
    from service.core.settings import Settings

    settings = Settings(redis_url=redis_url(14), fit_queue=QUEUE)
    fits = [new_fit_id() for _ in range(3)]
    dispatcher = Dispatcher(settings, JobStore(redis))
    for fit_id in fits:
        dispatcher.enqueue_fit(fit_id)
    assert redis.llen(QUEUE) == 3
    assert ids_in_broker(redis, QUEUE) == set(fits)


def test_active_states_read_every_active_fit_in_one_pass(redis: Redis) -> None:
    store = JobStore(redis)
    queued, running, gone = new_fit_id(), new_fit_id(), new_fit_id()
    before = time.time()
    for fit_id in (queued, running, gone):
        store.create(fit_id, spec())
    store.start_attempt(running)
    store.acquire_lock(running, "token", ttl_s=30)
    redis.delete(f"{store.prefix}:fit:{gone}")  # the record expired, the id is still active
    states = {s.fit_id: s for s in store.active_states()}
    assert (states[queued].status, states[queued].lock_held) == (FitStatus.QUEUED, False)
    assert (states[running].status, states[running].lock_held) == (FitStatus.RUNNING, True)
    assert states[gone].status is None
    assert before - 1 <= states[queued].created_at <= time.time() + 1


def test_a_running_fit_is_requeued_only_once_its_lock_stayed_missing_for_the_grace(
    redis: Redis, tmp_path: Path
) -> None:
    store = JobStore(redis)
    fit_id = new_fit_id()
    store.create(fit_id, spec())
    store.start_attempt(fit_id)
    sent: list[str] = []

    def reconcile(now: float) -> None:
        reconcile_once(
            store, Artifacts(tmp_path), sent.append, queue=QUEUE, retention_s=3600,
            grace_s=5, now=now,
        )  # fmt: skip

    reconcile(time.time())
    assert sent == [] and store.status(fit_id) is FitStatus.RUNNING
    reconcile(time.time() + 6)
    assert sent == [fit_id] and store.status(fit_id) is FitStatus.QUEUED


def test_fit_folders_without_a_record_are_swept_once_old(redis: Redis, tmp_path: Path) -> None:
    store, artifacts = JobStore(redis), Artifacts(tmp_path)
    recorded, orphan, young = new_fit_id(), new_fit_id(), new_fit_id()
    store.create(recorded, spec())
    for fit_id in (recorded, orphan, young):
        artifacts.write_spec(fit_id, spec())
    old = time.time() - 3600
    for fit_id in (recorded, orphan):
        os.utime(fit_folder(artifacts, fit_id), (old, old))
    outcome = reconcile_once(
        store, artifacts, lambda _: None, queue=QUEUE, retention_s=3600, sweep_folders=True
    )
    assert outcome.swept == [orphan]
    assert fit_folder(artifacts, recorded).exists() and fit_folder(artifacts, young).exists()
    assert not fit_folder(artifacts, orphan).exists()
