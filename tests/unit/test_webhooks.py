"""Webhooks' rules, each on its own: which addresses and URLs may be notified (never a
request forgery), how a notification is signed, how an attempt is pinned to the address it
checked, what an answer means, and how the API and the job store keep one notification per
final state. Real Redis, real sockets (a receiver on 127.0.0.1), real name resolution of
``localhost``; the end-to-end tests run the whole path through workers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.api.app import create_app
from service.api.reconciler import resend_notifications
from service.core.jobs import JobStore
from service.core.schemas import (
    FitSpec,
    FitStatus,
    Notification,
    NotificationStatus,
    ResolvedSampler,
)
from service.core.settings import Settings
from service.core.webhooks import (
    RefusedTarget,
    address_refusal,
    backoff_s,
    check_url,
    delivery_id,
    enqueue_first,
    sign,
    signing_secret,
    verify,
)
from tests.conftest import clean_redis, redis_url
from tests.support.receiver import Receiver
from worker.notify import build_request, checked_addresses, classify, post

SECRET = "s" * 40


def webhooks(*hosts: str, allow_private: bool = False, **more: Any) -> Settings:
    """Settings with webhooks on for ``hosts``."""
    return Settings(
        webhook_allowed_hosts=list(hosts),
        webhook_allow_private=allow_private,
        webhook_secret=SECRET,
        **more,
    )


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated) form of 127.0.0.1
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),  # unique local
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("100.64.0.1", "not public"),  # shared address space (carrier-grade NAT)
    ],
)
def test_every_class_of_non_public_address_is_refused_and_named(address: str, refusal: str) -> None:
    assert address_refusal(ip(address)) == refusal


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::1", "loopback"),  # 6to4 carrying 127.0.0.1
        ("2002:c0a8:101::1", "private"),  # 6to4 carrying 192.168.1.1
    ],
)
def test_an_ipv6_address_carrying_a_refused_ipv4_address_is_refused_as_it(
    address: str, refusal: str
) -> None:
    assert address_refusal(ip(address)) == refusal


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed_in_any_form(address: str) -> None:
    assert address_refusal(ip(address)) is None


# ---------------------------------------------------------------------------------- URLs


def test_webhooks_are_off_unless_some_host_is_allowed() -> None:
    with pytest.raises(RefusedTarget, match="off"):
        check_url("https://example.org/hook", Settings())


def test_a_url_is_notified_only_if_its_host_is_listed() -> None:
    settings = webhooks("hooks.example.org", "*.example.net")
    assert check_url("https://HOOKS.example.org./a?b=1", settings).host == "hooks.example.org"
    assert check_url("https://deep.api.example.net/", settings).host == "deep.api.example.net"
    for refused in (
        "https://example.org/",
        "https://hooks.example.org.evil.com/",
        "https://example.net/",  # a wildcard allows subdomains, not the domain
        "https://evilexample.net/",
    ):
        with pytest.raises(RefusedTarget, match="not allowed"):
            check_url(refused, settings)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.org/", "http or https"),
        ("hooks.example.org/hook", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("https://user:pw@hooks.example.org/", "credentials"),
        ("https://hooks.example.org@10.0.0.1/", "credentials"),
        ("https://hooks.example.org/#top", "fragment"),
        ("https://hooks.example.org/a b", "printable ASCII"),
        ("https://hooks.example.org/\n", "printable ASCII"),
        ("https://hooks.example.org\\@10.0.0.1/", "backslashes"),
        ("https://hööks.example.org/", "printable ASCII"),
        ("https://hooks.example.org:99999/", "port"),
        ("https://hooks.example.org:0/", "port above 0"),
        ("https:///hook", "host"),
        ("https://hooks.example.org/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_a_url_out_of_shape_is_refused_saying_why(url: str, message: str) -> None:
    with pytest.raises(RefusedTarget, match=message):
        check_url(url, webhooks("hooks.example.org"))


@pytest.mark.parametrize("host", ["0x7f000001", "2130706433", "127.1", "0177.0.0.1", "0x7f.1"])
def test_a_host_that_reads_as_a_number_is_refused_even_when_listed(host: str) -> None:
    # The C resolver reads each of these as 127.0.0.1.
    with pytest.raises(RefusedTarget, match="number"):
        check_url(f"http://{host}/", webhooks(host))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/", "http://[::1]/", "http://[::ffff:127.0.0.1]/"]
)
def test_an_ip_literal_is_checked_at_once_and_allowed_only_with_allow_private(url: str) -> None:
    hosts = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    with pytest.raises(RefusedTarget, match="loopback"):
        check_url(url, webhooks(*hosts))
    assert check_url(url, webhooks(*hosts, allow_private=True)).literal is not None


def test_a_name_that_resolves_to_a_private_address_is_refused_at_delivery() -> None:
    target = check_url("http://localhost:9/hook", webhooks("localhost"))  # no lookup yet
    with pytest.raises(RefusedTarget, match="loopback"):
        asyncio.run(checked_addresses(target, allow_private=False))
    allowed = asyncio.run(checked_addresses(target, allow_private=True))
    assert allowed and all(a.is_loopback for a in allowed)


def test_a_target_keeps_the_url_as_written_for_the_host_header_and_the_path() -> None:
    target = check_url("https://Hooks.example.org:8443/a/%2F?x=1&y=2", webhooks("*.example.org"))
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.org", 8443)
    assert target.host_header == "Hooks.example.org:8443"
    assert target.path == "/a/%2F?x=1&y=2"
    assert target.url_for(ip("93.184.216.34")) == "https://93.184.216.34:8443/a/%2F?x=1&y=2"
    assert target.url_for(ip("2606:2800::1")) == "https://[2606:2800::1]:8443/a/%2F?x=1&y=2"
    assert check_url("http://hooks.example.org", webhooks("hooks.example.org")).port == 80


# ------------------------------------------------------------------------------ settings


def test_webhooks_on_need_a_long_shared_secret() -> None:
    with pytest.raises(ValidationError, match="HBM_WEBHOOK_SECRET"):
        Settings(webhook_allowed_hosts=["hooks.example.org"])
    with pytest.raises(ValidationError, match="HBM_WEBHOOK_SECRET"):
        Settings(webhook_allowed_hosts=["hooks.example.org"], webhook_secret="short")


def test_allowed_hosts_may_be_a_json_list_or_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HBM_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("HBM_WEBHOOK_ALLOWED_HOSTS", "a.example.org, b.example.org")
    assert Settings().webhook_allowed_hosts == ["a.example.org", "b.example.org"]
    monkeypatch.setenv("HBM_WEBHOOK_ALLOWED_HOSTS", '["127.0.0.1"]')
    assert Settings().webhook_allowed_hosts == ["127.0.0.1"]


# ------------------------------------------------------------------------------- signing


def test_the_signature_is_hmac_sha256_of_the_timestamp_and_the_body() -> None:
    body = b'{"id": "abc", "status": "succeeded"}'
    expected = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("key", 1_700_000_000, body) == f"sha256={expected}"


def test_a_receiver_accepts_only_the_signed_body_recently_signed_with_its_secret() -> None:
    body, now = b'{"id": "abc"}', 1_700_000_000
    signature = sign("key", now, body)
    assert verify("key", str(now), body, signature, now=now + 10)
    assert not verify("key", str(now), body + b" ", signature, now=now)  # tampered body
    assert not verify("other", str(now), body, signature, now=now)  # another secret
    assert not verify("key", str(now + 1), body, signature, now=now)  # another timestamp
    assert not verify("key", str(now), body, signature, now=now + 301)  # a replay, later
    assert not verify("key", "soon", body, signature, now=now)


def test_each_key_has_its_own_secret_derived_from_the_service_secret() -> None:
    one, other = hashlib.sha256(b"key-1").hexdigest(), hashlib.sha256(b"key-2").hexdigest()
    expected = hmac.new(SECRET.encode(), f"hbm-webhook:{one}".encode(), hashlib.sha256)
    assert signing_secret(SECRET, one) == expected.hexdigest()
    assert len({signing_secret(SECRET, one), signing_secret(SECRET, other)}) == 2
    assert signing_secret(SECRET, "") != signing_secret("t" * 40, "")  # keys off: anonymous


def test_a_notification_keeps_one_delivery_id_per_fit_and_final_state() -> None:
    fit = "a" * 32
    assert delivery_id(fit, FitStatus.SUCCEEDED) == delivery_id(fit, FitStatus.SUCCEEDED)
    assert delivery_id(fit, FitStatus.SUCCEEDED) != delivery_id(fit, FitStatus.CANCELLED)
    assert delivery_id(fit, FitStatus.FAILED) != delivery_id("b" * 32, FitStatus.FAILED)


def test_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    assert [backoff_s(n, 5, 300) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff_s(1000, 5, 300) == 300


# ------------------------------------------------------------------------------ delivery


def test_an_answer_is_delivered_retried_or_final_by_its_status() -> None:
    assert [classify(code).result for code in (200, 202, 204)] == ["delivered"] * 3
    assert [classify(code).result for code in (408, 429, 500, 502, 503)] == ["retry"] * 5
    assert [classify(code).result for code in (301, 302, 307, 400, 401, 404, 410, 422)] == [
        "failed"
    ] * 8
    assert "redirect" in (classify(302).error or "")


def test_an_https_attempt_connects_to_the_checked_address_and_verifies_the_name() -> None:
    target = check_url("https://hooks.example.org/fits?x=1", webhooks("hooks.example.org"))

    async def build() -> httpx.Request:
        async with httpx.AsyncClient() as client:
            return build_request(client, target, ip("93.184.216.34"), b"{}", {"X-A": "1"})

    request = asyncio.run(build())
    assert str(request.url) == "https://93.184.216.34/fits?x=1"
    assert request.headers["host"] == "hooks.example.org"
    assert request.extensions["sni_hostname"] == "hooks.example.org"  # TLS name checked
    assert request.headers["x-a"] == "1"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def test_a_name_is_resolved_once_and_the_request_pinned_to_its_address(
    receiver: Receiver,
) -> None:
    target = check_url(
        receiver.url("/hook", host="localhost"), webhooks("localhost", allow_private=True)
    )
    outcome = asyncio.run(post(target, b'{"a": 1}', {"X-A": "1"}, allow_private=True))
    assert (outcome.result, outcome.status_code) == ("delivered", 200)
    (got,) = receiver.received("/hook")
    assert got.headers["host"] == f"localhost:{receiver.port}"
    assert got.body == b'{"a": 1}'


def test_a_redirect_is_never_followed(receiver: Receiver) -> None:
    receiver.answer("/moved", 302)
    target = check_url(receiver.url("/moved"), webhooks("127.0.0.1", allow_private=True))
    outcome = asyncio.run(post(target, b"{}", {}, allow_private=True))
    assert (outcome.result, outcome.status_code) == ("failed", 302)
    assert receiver.received("/redirected") == []


def test_a_receiver_that_never_answers_costs_an_attempt_its_time_limit_only(
    receiver: Receiver,
) -> None:
    receiver.hang("/stuck")
    target = check_url(receiver.url("/stuck"), webhooks("127.0.0.1", allow_private=True))
    started = time.monotonic()
    outcome = asyncio.run(post(target, b"{}", {}, allow_private=True, total_s=1.0))
    assert outcome.result == "retry"
    assert "time limit" in (outcome.error or "")
    assert time.monotonic() - started < 5


def test_a_receiver_nobody_listens_on_is_retried(receiver: Receiver) -> None:
    port = receiver.port
    receiver.close()
    target = check_url(f"http://127.0.0.1:{port}/", webhooks("127.0.0.1", allow_private=True))
    outcome = asyncio.run(post(target, b"{}", {}, allow_private=True))
    assert (outcome.result, outcome.status_code) == ("retry", None)
    assert "connect" in (outcome.error or "")


# ------------------------------------------------------------ job store, API, reconciler


def spec() -> FitSpec:
    sampler = ResolvedSampler(
        draws=10, tune=10, chains=1, seed=1, target_accept=0.8, method="nutpie"
    )
    return FitSpec(
        formula="y ~ 1", family="gaussian", link="identity", columns={"y": [1.0]}, sampler=sampler
    )


@pytest.fixture
def store() -> JobStore:
    return JobStore(clean_redis(redis_url(14)), retention_s=3600)


def test_a_final_fit_with_a_notify_url_sends_its_first_attempt_once(store: JobStore) -> None:
    store.create("a" * 32, spec(), notify_url="https://hooks.example.org/")
    store.create("b" * 32, spec())
    sent: list[tuple[str, int]] = []

    def send(fit_id: str, attempt: int) -> None:
        sent.append((fit_id, attempt))

    assert not enqueue_first(store, send, "a" * 32, FitStatus.CANCELLED)  # not final yet
    for fit_id in ("a" * 32, "b" * 32):
        assert store.request_cancel(fit_id) is FitStatus.CANCELLED
        for _ in range(3):  # a re-run, a racing caller: still once
            enqueue_first(store, send, fit_id, FitStatus.CANCELLED)
    assert sent == [("a" * 32, 1)]
    record = store.get("a" * 32)
    assert record is not None and record.notification is not None
    assert record.notification.status is NotificationStatus.PENDING
    assert store.get("b" * 32).notification is None  # type: ignore[union-attr]


def test_a_run_that_ends_its_fit_sends_the_notification_of_the_status_it_ended_with(
    store: JobStore,
) -> None:
    fit_id = "c" * 32
    store.create(fit_id, spec(), notify_url="https://hooks.example.org/")
    store.start_attempt(fit_id)
    store.request_cancel(fit_id)  # running: flagged; the run's finish turns it cancelled
    assert store.notifications_due(time.time() + 1) == []  # not final yet
    assert store.finish(fit_id, FitStatus.SUCCEEDED) is FitStatus.CANCELLED
    assert store.notifications_due(time.time() + 1) == [fit_id]
    sent: list[tuple[str, int]] = []
    assert not enqueue_first(store, lambda *a: sent.append(a), fit_id, FitStatus.SUCCEEDED)
    assert enqueue_first(store, lambda *a: sent.append(a), fit_id, FitStatus.CANCELLED)
    assert store.finish(fit_id, FitStatus.FAILED) is FitStatus.CANCELLED  # a re-run: no change
    assert not enqueue_first(store, lambda *a: sent.append(a), fit_id, FitStatus.CANCELLED)
    assert sent == [(fit_id, 1)]


def test_the_reconciler_sends_again_only_overdue_pending_notifications(store: JobStore) -> None:
    for fit_id in ("a" * 32, "b" * 32):
        store.create(fit_id, spec(), notify_url="https://hooks.example.org/")
        store.request_cancel(fit_id)
    delivered = Notification(url="https://hooks.example.org/", status="delivered", attempts=1)
    store.record_notification("b" * 32, delivered, due=time.time())
    sent: list[tuple[str, int]] = []
    now = time.time()

    def notify(fit_id: str, attempt: int) -> None:
        sent.append((fit_id, attempt))

    assert resend_notifications(store, notify, now=now) == []  # not overdue yet
    assert resend_notifications(store, notify, now=now + 61) == ["a" * 32]
    assert sent == [("a" * 32, 1)]
    assert resend_notifications(store, notify, now=now + 62) == []  # just sent again
    assert store.notifications_due(now + 1000) == ["a" * 32]  # b had nothing left to send


class RecordingDispatcher:
    """Remembers what would have been queued."""

    def __init__(self) -> None:
        self.fits: list[str] = []
        self.notifications: list[tuple[str, int]] = []

    def enqueue_fit(self, fit_id: str) -> None:
        self.fits.append(fit_id)

    def enqueue_notification(self, fit_id: str, attempt: int) -> None:
        self.notifications.append((fit_id, attempt))

    async def close(self) -> None:
        pass


def api(tmp_path: Path, dispatcher: RecordingDispatcher, **settings: Any) -> TestClient:
    url = redis_url(14)
    clean_redis(url)
    app = create_app(Settings(**({"redis_url": url, "data_dir": tmp_path} | settings)))
    app.state.services.dispatcher = dispatcher
    return TestClient(app)


def fit_body(**more: Any) -> dict[str, Any]:
    data = {"school": [1, 1, 2, 2, 3], "score": [1.0, 2.0, 3.5, 2.5, 0.1]}
    return {"data": data, "formula": "score ~ (1 | school)"} | more


def refused_field(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    return error["field"], error["message"]


def test_a_notify_url_is_a_422_naming_it_when_webhooks_are_off(tmp_path: Path) -> None:
    with api(tmp_path, RecordingDispatcher()) as client:
        response = client.post("/v1/fits", json=fit_body(notify_url="https://example.org/"))
        assert refused_field(response) == (
            "notify_url",
            "webhooks are off on this service (no host is allowed)",
        )
        assert client.get("/v1/webhooks/secret").status_code == 404


def test_the_api_refuses_hosts_not_allowed_and_private_addresses(tmp_path: Path) -> None:
    dispatcher = RecordingDispatcher()
    settings = {
        "webhook_allowed_hosts": ["127.0.0.1", "hooks.example.org"],
        "webhook_secret": SECRET,
    }
    with api(tmp_path, dispatcher, **settings) as client:
        for url, words in (
            ("https://example.org/", "not allowed"),
            ("http://127.0.0.1:9000/", "loopback"),
            ("file:///etc/passwd", "http or https"),
            ("https://hooks.example.org/" + "a" * 2100, "longer than"),  # the text limit first
        ):
            field, message = refused_field(client.post("/v1/fits", json=fit_body(notify_url=url)))
            assert field == "notify_url" and words in message
            assert url not in message  # inputs are never echoed
        assert dispatcher.fits == []
        response = client.post("/v1/fits", json=fit_body(notify_url="https://hooks.example.org/f"))
        assert response.status_code == 202
        assert response.json()["notification"] == {
            "url": "https://hooks.example.org/f",
            "status": "pending",
            "attempts": 0,
            "last_status_code": None,
            "last_error": None,
            "delivered_at": None,
            "next_attempt_at": None,
        }


def test_cancelling_a_queued_fit_sends_its_notification_once(tmp_path: Path) -> None:
    dispatcher = RecordingDispatcher()
    settings = {"webhook_allowed_hosts": ["hooks.example.org"], "webhook_secret": SECRET}
    with api(tmp_path, dispatcher, **settings) as client:
        response = client.post("/v1/fits", json=fit_body(notify_url="https://hooks.example.org/"))
        location = response.headers["location"]
        assert client.delete(location).json()["status"] == "cancelled"
        assert client.delete(location).status_code == 204  # now deleted: nothing more
        assert dispatcher.notifications == [(location.rsplit("/", 1)[1], 1)]


def test_each_key_reads_its_own_signing_secret(tmp_path: Path) -> None:
    keys = ("key-one", "key-two")
    digests = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    settings = {
        "webhook_allowed_hosts": ["hooks.example.org"],
        "webhook_secret": SECRET,
        "api_key_hashes": digests,
    }
    with api(tmp_path, RecordingDispatcher(), **settings) as client:
        assert client.get("/v1/webhooks/secret").status_code == 401
        answers = [client.get("/v1/webhooks/secret", headers={"X-API-Key": k}) for k in keys]
        assert [a.json()["secret"] for a in answers] == [
            signing_secret(SECRET, digest) for digest in digests
        ]
        assert answers[0].headers["cache-control"] == "no-store"
        assert json.loads(answers[0].text)["signature_header"] == "X-Signature"
