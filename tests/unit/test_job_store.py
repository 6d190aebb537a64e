"""The job store's atomic steps, on a real Redis: a finish and a cancel that race decide one
final state; cancelled fits expire; a deleted fit's id and request keys are never reused; a
run whose lock lapsed in an outage takes it back; Redis keys are bound to their request."""

from __future__ import annotations

import pytest
from redis import Redis

from service.core.jobs import Claim, JobStore, Refresh, new_fit_id
from service.core.schemas import FitError, FitSpec, FitStatus, ResolvedSampler
from tests.conftest import clean_redis, redis_url


@pytest.fixture
def store() -> JobStore:
    return JobStore(clean_redis(redis_url(14)), retention_s=3600)


def spec(seed: int = 1) -> FitSpec:
    sampler = ResolvedSampler(
        draws=10, tune=10, chains=1, seed=seed, target_accept=0.8, method="nutpie"
    )
    return FitSpec(
        formula="y ~ 1", family="gaussian", link="identity", columns={"y": [1.0]}, sampler=sampler
    )


def running(store: JobStore, token: str = "run-1") -> str:
    fit_id = new_fit_id()
    assert store.create(fit_id, spec()) is True
    assert store.start_attempt(fit_id) == 1
    assert store.acquire_lock(fit_id, token, ttl_s=30)
    return fit_id


def test_a_cancel_asked_before_the_finish_makes_the_fit_cancelled(store: JobStore) -> None:
    fit_id = running(store)
    assert store.request_cancel(fit_id) is FitStatus.RUNNING  # flagged for its worker
    assert store.finish(fit_id, FitStatus.SUCCEEDED, token="run-1") is FitStatus.CANCELLED
    assert store.status(fit_id) is FitStatus.CANCELLED
    assert not store.lock_held(fit_id)


def test_a_cancel_asked_after_the_finish_finds_the_fit_final(store: JobStore) -> None:
    fit_id = running(store)
    assert store.finish(fit_id, FitStatus.SUCCEEDED, token="run-1") is FitStatus.SUCCEEDED
    assert store.request_cancel(fit_id) is FitStatus.SUCCEEDED
    assert store.status(fit_id) is FitStatus.SUCCEEDED


def test_only_the_run_holding_the_lock_may_finish(store: JobStore) -> None:
    fit_id = running(store, token="owner")
    assert store.finish(fit_id, FitStatus.SUCCEEDED, token="intruder") is None
    assert store.status(fit_id) is FitStatus.RUNNING
    # a lock that lapsed with nobody taking it still lets its run finish
    store.redis.delete(store._lock(fit_id))
    assert store.finish(fit_id, FitStatus.SUCCEEDED, token="owner") is FitStatus.SUCCEEDED


def test_a_fit_cancelled_while_queued_expires_with_the_retention(store: JobStore) -> None:
    fit_id = new_fit_id()
    store.create(fit_id, spec())
    assert store.request_cancel(fit_id) is FitStatus.CANCELLED
    assert 0 < store.redis.ttl(store._key(fit_id)) <= 3600
    assert fit_id not in store.active_ids()
    assert store.active_count("") == 0


def test_a_deleted_fits_id_and_request_keys_are_never_reused(store: JobStore) -> None:
    first = new_fit_id()
    assert store.claim("k", first, "digest-a", ttl_s=60) == (Claim.CLAIMED, first)
    store.create(first, spec(), dedup=("k",))
    assert store.claim("k", new_fit_id(), "digest-a", ttl_s=60) == (Claim.EXISTING, first)
    store.delete(first)
    second = new_fit_id()
    assert store.claim("k", second, "digest-b", ttl_s=60) == (Claim.CLAIMED, second)
    assert store.create(first, spec()) is None  # the deleted id is refused for ever


def test_a_request_key_names_one_request(store: JobStore) -> None:
    fit_id = new_fit_id()
    store.claim("k", fit_id, "digest-a", ttl_s=60)
    assert store.claim("k", new_fit_id(), "digest-b", ttl_s=60) == (Claim.CONFLICT, fit_id)


@pytest.mark.parametrize(
    ("status", "error", "released"),
    [
        (FitStatus.SUCCEEDED, None, False),
        (FitStatus.FAILED, FitError(reason="model_error", message="m"), False),
        (FitStatus.FAILED, FitError(reason="storage_error", message="m"), True),
        (FitStatus.FAILED, FitError(reason="internal_error", message="m"), True),
        (FitStatus.CANCELLED, None, True),
    ],
)
def test_a_fit_that_is_not_the_answer_to_its_request_releases_its_keys(
    store: JobStore, status: FitStatus, error: FitError | None, released: bool
) -> None:
    fit_id = new_fit_id()
    store.claim("k", fit_id, "d", ttl_s=60)
    store.create(fit_id, spec(), dedup=("k",))
    store.start_attempt(fit_id)
    store.finish(fit_id, status, error=error)
    outcome, _ = store.claim("k", new_fit_id(), "d", ttl_s=60)
    assert outcome is (Claim.CLAIMED if released else Claim.EXISTING)


def test_a_lapsed_lock_is_taken_back_unless_another_run_took_it(store: JobStore) -> None:
    fit_id = running(store, token="mine")
    assert store.refresh_lock(fit_id, "mine", 30) is Refresh.EXTENDED
    store.redis.delete(store._lock(fit_id))  # lapsed during an outage
    assert store.refresh_lock(fit_id, "mine", 30) is Refresh.RETAKEN
    assert store.lock_held(fit_id)
    store.redis.set(store._lock(fit_id), "other")
    assert store.refresh_lock(fit_id, "mine", 30) is Refresh.LOST


def test_a_retaken_lock_puts_a_requeued_fit_back_to_running(store: JobStore) -> None:
    fit_id = running(store, token="mine")
    store.redis.delete(store._lock(fit_id))
    assert store.requeue(fit_id, grace_s=0)
    assert store.status(fit_id) is FitStatus.QUEUED
    assert store.refresh_lock(fit_id, "mine", 30) is Refresh.RETAKEN
    assert store.status(fit_id) is FitStatus.RUNNING
    assert not store.acquire_lock(fit_id, "redelivery", 30)  # the new message stands down


def test_a_fit_is_requeued_only_after_its_lock_stayed_missing_for_the_grace(
    store: JobStore,
) -> None:
    fit_id = running(store)
    store.redis.delete(store._lock(fit_id))
    assert not store.requeue(fit_id, grace_s=5, now=100.0)  # first seen missing
    assert not store.requeue(fit_id, grace_s=5, now=103.0)
    assert store.requeue(fit_id, grace_s=5, now=105.5)
    assert store.status(fit_id) is FitStatus.QUEUED


def test_a_lock_seen_again_clears_the_suspicion(store: JobStore) -> None:
    fit_id = running(store, token="mine")
    store.redis.delete(store._lock(fit_id))
    assert not store.requeue(fit_id, grace_s=5, now=100.0)
    store.refresh_lock(fit_id, "mine", 30)
    assert not store.requeue(fit_id, grace_s=5, now=200.0)  # held: nothing to do
    store.redis.delete(store._lock(fit_id))
    assert not store.requeue(fit_id, grace_s=5, now=300.0)  # a fresh suspicion starts


def test_workers_are_live_while_they_announce_themselves(store: JobStore) -> None:
    store.announce_worker("q", "host:1", ttl_s=30)
    store.announce_worker("q", "host:2", ttl_s=-1)  # its presence already ran out
    assert store.live_workers("q") == {"host:1"}
    store.retire_worker("q", "host:1")
    assert store.live_workers("q") == set()


def test_every_key_is_under_the_prefix(store: JobStore) -> None:
    redis: Redis = store.redis
    fit_id = running(store)
    store.claim("k", fit_id, "d", ttl_s=60)
    store.count_rate("", "fits")
    store.announce_worker("q", "w", 10)
    store.take_reconciler_turn(5)
    store.request_cancel(fit_id)
    store.finish(fit_id, FitStatus.SUCCEEDED, token="run-1")
    store.delete(fit_id)
    assert all(key.startswith(b"hbm:") for key in redis.keys("*"))


def test_concurrent_creations_never_overshoot_the_owners_quotas(store: JobStore) -> None:
    """Forty threads create at once: exactly the quota's worth of fits is recorded and
    counted; the rest are refused with 429, whichever limit binds first."""
    from concurrent.futures import ThreadPoolExecutor

    from service.core.errors import TooManyRequests
    from service.core.jobs import FitQuota

    def create(quota: FitQuota, owner: str, _: int = 0) -> bool:
        try:
            return bool(store.create(new_fit_id(), spec(), owner, quota=quota))
        except TooManyRequests:
            return False

    for quota, owner in ((FitQuota(per_minute=7), "a"), (FitQuota(max_active=5), "b")):
        with ThreadPoolExecutor(max_workers=20) as pool:
            made = sum(pool.map(create, [quota] * 40, [owner] * 40))
        assert made == min(quota.per_minute, quota.max_active)
        assert store.active_count(owner) == made
    assert store.rate_used("a", "fits")[0] == 7
    with pytest.raises(TooManyRequests, match="over 7 fits a minute") as refused:
        store.create(new_fit_id(), spec(), "a", quota=FitQuota(per_minute=7))
    assert 0 < refused.value.retry_after <= 60
