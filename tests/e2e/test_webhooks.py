"""Webhooks over the real deployment: a fit with a ``notify_url`` is POSTed there once when
it ends (succeeded, failed, cancelled queued or running), signed with the key's secret,
with the body of ``GET /v1/fits/{id}``; a failing receiver is retried with backoff, a
redirect is never followed, and targets that are not allowed are refused at submission and
again at delivery. The receiver is a small HTTP server on 127.0.0.1 in this process; this
deployment allows it (``HBM_WEBHOOK_ALLOW_PRIVATE=true``) until the last test turns that
off."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import QUICK, Deployment, deployed, wait_for_fit, wait_for_status
from tests.support.receiver import Receiver

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret-" + "x" * 32
WEBHOOKS = {
    "HBM_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1", "localhost"]',
    "HBM_WEBHOOK_ALLOW_PRIVATE": "true",
    "HBM_WEBHOOK_SECRET": SECRET,
    "HBM_WEBHOOK_BACKOFF_S": "0.2",
    "HBM_WEBHOOK_BACKOFF_CAP_S": "1",
}
#: A model the API accepts and Bambi cannot build (one level, a constant response): the
#: cheapest fit that ends, failed, within a second or two of reaching its worker.
FAILING = {"data": {"g": ["a"] * 4, "y": [1.0] * 4}, "formula": "y ~ (1 | g)", "sampler": QUICK}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from deployed(tmp_path_factory, 11, **WEBHOOKS)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def client(deployment: Deployment) -> Iterator[httpx.Client]:
    with deployment.client() as http:
        yield http


def submit(client: httpx.Client, notify_url: str, body: dict[str, Any]) -> str:
    response = client.post("/v1/fits", json=body | {"notify_url": notify_url})
    assert response.status_code == 202, response.text
    location: str = response.headers["location"]
    return location


def notified(client: httpx.Client, location: str) -> dict[str, Any]:
    """The fit once its notification is no longer pending."""
    return wait_for_status(
        client, location, lambda f: f["notification"]["status"] != "pending", timeout_s=300
    )


def test_a_succeeded_fit_posts_its_record_once_signed_with_the_keys_secret(
    client: httpx.Client, receiver: Receiver, seed_columns: dict[str, list[Any]]
) -> None:
    body = {"data": seed_columns, "formula": "score ~ (1 | school)", "sampler": QUICK}
    location = submit(client, receiver.url("/succeeded"), body)
    fit = notified(client, location)
    assert fit["status"] == "succeeded"
    notification = fit["notification"]
    assert notification["status"] == "delivered"
    assert (notification["attempts"], notification["last_status_code"]) == (1, 200)
    assert notification["last_error"] is None and notification["delivered_at"] is not None
    (got,) = receiver.received("/succeeded")

    # The secret shown to the (anonymous) owner is derived from the service's secret, and
    # signs the timestamp and the body exactly as they arrived.
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    assert secret == hmac.new(SECRET.encode(), b"hbm-webhook:", hashlib.sha256).hexdigest()
    timestamp = got.headers["x-hbm-timestamp"]
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + got.body, hashlib.sha256)
    assert got.headers["x-signature"] == f"sha256={mac.hexdigest()}"
    finished = datetime.fromisoformat(fit["finished_at"]).timestamp()
    assert int(timestamp) >= int(finished)
    assert got.headers["x-hbm-event"] == "fit.succeeded"
    assert got.headers["x-hbm-attempt"] == "1"
    assert len(got.headers["x-hbm-delivery"]) == 32
    assert got.headers["content-type"] == "application/json"
    assert got.headers["host"] == f"127.0.0.1:{receiver.port}"

    # The body is the fit as GET answers it, but for the notification being delivered.
    record = client.get(location).json()
    del record["notification"]
    assert json.loads(got.body) == record
    assert record["links"]["summary"] == f"{location}/summary"


def test_a_failed_fit_posts_once_with_its_error(client: httpx.Client, receiver: Receiver) -> None:
    location = submit(client, receiver.url("/failed"), FAILING)
    fit = notified(client, location)
    assert fit["status"] == "failed"
    assert fit["notification"]["status"] == "delivered"
    (got,) = receiver.received("/failed")
    assert got.headers["x-hbm-event"] == "fit.failed"
    sent = json.loads(got.body)
    assert sent["status"] == "failed"
    assert sent["error"] == fit["error"]


def test_a_cancelled_fit_posts_once_whether_it_was_queued_or_running(
    client: httpx.Client, receiver: Receiver, seed_records: list[dict[str, Any]]
) -> None:
    # A fit that samples for many seconds holds the one fit worker, so the next one waits.
    busy = {
        "data": seed_records * 5,
        "formula": "score ~ (1 | school)",
        "family": "t",
        "sampler": {"draws": 8_000, "tune": 1000, "chains": 2},
    }
    running = submit(client, receiver.url("/cancelled-running"), busy)
    queued = submit(client, receiver.url("/cancelled-queued"), FAILING)
    cancelled = client.delete(queued)
    assert (cancelled.status_code, cancelled.json()["status"]) == (202, "cancelled")
    wait_for_status(client, running, lambda f: f["status"] == "running")
    assert client.delete(running).status_code == 202
    for location, path in ((queued, "/cancelled-queued"), (running, "/cancelled-running")):
        fit = notified(client, location)
        assert (fit["status"], fit["notification"]["status"]) == ("cancelled", "delivered")
        (got,) = receiver.received(path)
        assert got.headers["x-hbm-event"] == "fit.cancelled"
        assert json.loads(got.body)["status"] == "cancelled"
    assert wait_for_fit(client, queued)["attempts"] == 0  # the queued one never started


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.answer("/flaky", 500, 503, 200)
    location = submit(client, receiver.url("/flaky"), FAILING)
    notification = notified(client, location)["notification"]
    assert notification["status"] == "delivered"
    assert (notification["attempts"], notification["last_status_code"]) == (3, 200)
    got = receiver.received("/flaky")
    assert [r.headers["x-hbm-attempt"] for r in got] == ["1", "2", "3"]
    assert len({r.headers["x-hbm-delivery"] for r in got}) == 1  # one notification, retried


def test_a_receiver_that_keeps_failing_is_given_up_after_max_attempts(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.answer("/down", 503)
    location = submit(client, receiver.url("/down"), FAILING)
    notification = notified(client, location)["notification"]
    assert notification["status"] == "failed"
    assert (notification["attempts"], notification["last_status_code"]) == (5, 503)
    assert "503" in notification["last_error"]
    assert len(receiver.received("/down")) == 5


def test_a_redirect_is_not_followed_and_a_client_error_is_final(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.answer("/moved", 302)
    receiver.answer("/gone", 410)
    moved = submit(client, receiver.url("/moved"), FAILING)
    gone = submit(client, receiver.url("/gone"), FAILING)
    for location, code in ((moved, 302), (gone, 410)):
        notification = notified(client, location)["notification"]
        assert notification["status"] == "failed"
        assert (notification["attempts"], notification["last_status_code"]) == (1, code)
    assert "redirect" in notified(client, moved)["notification"]["last_error"]
    assert (len(receiver.received("/moved")), len(receiver.received("/gone"))) == (1, 1)
    assert receiver.received("/redirected") == []


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://example.org/hooks", "not allowed"),
        ("http://10.0.0.1/hooks", "not allowed"),
        ("ftp://127.0.0.1/hooks", "http or https"),
        ("http://0x7f000001/hooks", "number"),
    ],
)
def test_a_notify_url_that_is_not_allowed_is_a_422_naming_it(
    client: httpx.Client, url: str, words: str
) -> None:
    response = client.post("/v1/fits", json=FAILING | {"notify_url": url})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "notify_url" and words in error["message"]


def test_without_allow_private_a_loopback_target_is_refused_at_submission_and_at_delivery(
    deployment: Deployment, client: httpx.Client, receiver: Receiver
) -> None:
    # The interactive worker (which delivers) first, while the API still accepts 127.0.0.1.
    deployment.env["HBM_WEBHOOK_ALLOW_PRIVATE"] = "false"
    deployment.stop("worker-interactive")
    deployment.start_worker("worker-interactive", "interactive")
    by_address = submit(client, receiver.url("/late-check"), FAILING)
    # A name is resolved only at delivery, where it turns out to be loopback.
    by_name = submit(client, receiver.url("/by-name", host="localhost"), FAILING)
    for location in (by_address, by_name):
        notification = notified(client, location)["notification"]
        assert (notification["status"], notification["attempts"]) == ("refused", 1)
        assert "loopback" in notification["last_error"]
    assert receiver.received("/late-check") == receiver.received("/by-name") == []

    deployment.stop("api")
    deployment.start("api", "service")
    deployment.wait_until()
    response = client.post("/v1/fits", json=FAILING | {"notify_url": receiver.url("/never")})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "notify_url" and "loopback" in error["message"]
