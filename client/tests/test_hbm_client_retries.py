"""Retries: 429 and 503 are sent again after the service's Retry-After (or a growing,
jittered backoff without one), connection errors of idempotent calls too, a bounded number
of times; a fit submitted again carries the same Idempotency-Key, so it is one fit."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from conftest import Clock, Service, problem, record

from hbm_client import Client, RateLimited, RetryPolicy, Unavailable
from hbm_client._retry import retry_after_s

URL = "http://hbm.test"
DATA = {"school": [1, 1, 2, 2], "score": [0.5, 1.0, 2.0, 2.5]}


def client(service: Service, max_retries: int = 3) -> Client:
    return Client(URL, transport=service.transport(), max_retries=max_retries)


def test_a_429_is_sent_again_after_the_retry_after_the_service_asked(
    service: Service, clock: Clock
) -> None:
    service.on("GET", "/v1/fits/f1", problem(429, "over 120 calls", retry_after=7), record())
    fit = client(service).get_fit("f1")
    assert fit.status == "succeeded"
    assert clock.sleeps == [7.0]
    assert len(service.sent("GET", "/v1/fits/f1")) == 2


def test_a_503_without_retry_after_backs_off_growing_with_jitter(
    service: Service, clock: Clock
) -> None:
    busy = httpx.Response(503, json={"title": "Service unavailable", "detail": "busy"})
    service.on("GET", "/v1/fits/f1", busy, busy, busy, record())
    client(service).get_fit("f1")
    # 0.5 s doubling, each wait drawn between half and all of its ceiling.
    for wait, ceiling in zip(clock.sleeps, [0.5, 1.0, 2.0], strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_retries_are_bounded_and_the_last_answer_is_raised_with_its_retry_after(
    service: Service, clock: Clock
) -> None:
    service.on("GET", "/v1/fits/f1", problem(503, "no interactive worker", retry_after=2))
    with pytest.raises(Unavailable) as raised:
        client(service, max_retries=2).get_fit("f1")
    assert len(service.sent("GET", "/v1/fits/f1")) == 3
    assert clock.sleeps == [2.0, 2.0]
    assert raised.value.status == 503
    assert raised.value.retry_after == 2.0
    assert raised.value.detail == "no interactive worker"


def test_a_retry_after_longer_than_a_minute_is_raised_at_once(
    service: Service, clock: Clock
) -> None:
    service.on("GET", "/v1/fits/f1", problem(429, "10 fits in progress", retry_after=600))
    with pytest.raises(RateLimited) as raised:
        client(service).get_fit("f1")
    assert clock.sleeps == []
    assert raised.value.retry_after == 600


def test_max_retries_zero_sends_once(service: Service, clock: Clock) -> None:
    service.on("GET", "/v1/fits/f1", problem(503, "busy", retry_after=1))
    with pytest.raises(Unavailable):
        client(service, max_retries=0).get_fit("f1")
    assert len(service.requests) == 1


def test_a_refusal_is_never_retried(service: Service, clock: Clock) -> None:
    service.on("GET", "/v1/fits/f1", problem(404, "no fit"))
    with pytest.raises(Exception, match="no fit"):
        client(service).get_fit("f1")
    assert len(service.requests) == 1 and clock.sleeps == []


def test_a_connection_error_is_retried_and_then_raised(service: Service, clock: Clock) -> None:
    refused = httpx.ConnectError("connection refused")
    service.on("GET", "/v1/fits/f1", refused, record())
    assert client(service).get_fit("f1").status == "succeeded"
    service.requests.clear()
    service.script.clear()
    service.on("GET", "/v1/fits/f1", refused)
    with pytest.raises(httpx.ConnectError):
        client(service, max_retries=1).get_fit("f1")
    assert len(service.requests) == 2


def test_a_fit_sent_again_after_a_lost_answer_carries_the_same_idempotency_key(
    service: Service, clock: Clock
) -> None:
    lost = httpx.ReadTimeout("the answer did not arrive")
    service.on("POST", "/v1/fits", lost, problem(503, "redis", retry_after=1), record("queued"))
    client(service).fit(DATA, "score ~ (1 | school)", wait=False)
    posts = service.sent("POST", "/v1/fits")
    assert len(posts) == 3
    keys = {p.headers["Idempotency-Key"] for p in posts}
    assert len(keys) == 1 and len(keys.pop()) == 32
    assert len({p.content for p in posts}) == 1


def test_each_fit_call_has_its_own_key_unless_one_is_given(service: Service, clock: Clock) -> None:
    service.on("POST", "/v1/fits", record("queued"))
    hbm = client(service)
    hbm.fit(DATA, "score ~ (1 | school)", wait=False)
    hbm.fit(DATA, "score ~ (1 | school)", wait=False)
    hbm.fit(DATA, "score ~ (1 | school)", wait=False, idempotency_key="batch-7/school")
    keys = [p.headers["Idempotency-Key"] for p in service.sent("POST", "/v1/fits")]
    assert keys[0] != keys[1] and keys[2] == "batch-7/school"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("5", now) == 5.0
    assert retry_after_s(" 1.5 ", now) == 1.5
    assert retry_after_s("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_s("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # in the past
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def test_the_policy_never_retries_a_connection_error_of_a_non_idempotent_call() -> None:
    policy = RetryPolicy(max_retries=3)
    assert policy.wait_after_error(0, idempotent=False) is None
    assert policy.wait_after_error(0, idempotent=True) is not None
    assert policy.wait_after_error(3, idempotent=True) is None
