"""Delivering a fit's notification: one attempt per ``hbm.notify`` task, retried by sending
the task again with a countdown. The rules (URLs, addresses, signatures, backoff) are in
``service.core.webhooks``; this module resolves, pins, posts and records.

An attempt

1. takes the notification's lock (``notify:lock:{id}``): while another attempt runs, this
   message is dropped;
2. reads the fit: gone, no longer pending, or this attempt made already (a message sent
   twice, or again by the reconciler): dropped. So an attempt is made once, and a
   notification is never delivered twice by the service (a receiver that answered too late
   may still see a retry: ``X-Hbm-Delivery`` is the same);
3. checks the URL again under the current settings, resolves its host once, refuses it if
   any of its addresses is refused, and connects to a checked address (the next one only
   if connecting fails), sending the URL's host in the Host header and, for https, as the
   TLS server name (SNI) the certificate is verified against (httpx's ``sni_hostname``
   extension; the URL httpx sees names the address). The address checked is the address
   used: a name that answers differently a moment later (DNS rebinding) changes nothing;
4. POSTs the body (the fit as ``GET /v1/fits/{id}`` answers it, without its
   ``notification``), signed, never following a redirect, within ``CONNECT_TIMEOUT_S`` to
   connect and ``TOTAL_TIMEOUT_S`` in all (name resolution included), reading at most
   ``MAX_ANSWER_BYTES`` of the answer; proxies from the environment are ignored (a proxy
   would connect elsewhere than the checked address);
5. records the outcome on the fit and, when the attempt may be retried, sends the next one
   after its backoff (the reconciler sends it if that message is lost).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import httpx

from service.core.jobs import JobStore
from service.core.schemas import FitResource, FitStatus, Notification, NotificationStatus
from service.core.settings import Settings
from service.core.webhooks import (
    NOTIFY_TASK,
    IPAddress,
    RefusedTarget,
    Target,
    backoff_s,
    check_address,
    check_url,
    delivery_id,
    enqueue_first,
    event_name,
    sign,
    signing_secret,
)
from worker.context import Context
from worker.resilience import best_effort

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
TOTAL_TIMEOUT_S = 10.0
#: Bytes of a receiver's answer read at most (nothing of it is kept).
MAX_ANSWER_BYTES = 4096
#: How long one attempt may hold the notification's lock (an attempt takes at most 10 s).
LOCK_TTL_S = 30
USER_AGENT = "hbm-service-webhooks/1"

#: Name resolution runs here: a hung resolver costs a thread, never an attempt's deadline.
_resolver = ThreadPoolExecutor(max_workers=2, thread_name_prefix="notify-dns")


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    result: Literal["delivered", "retry", "failed", "refused"]
    status_code: int | None = None
    error: str | None = None


# ----------------------------------------------------------------------------- sending


def send_notification(fit_id: str, attempt: int, countdown: float = 0.0) -> None:
    """Queue attempt ``attempt`` at the fit's notification, ``countdown`` seconds from now."""
    from worker.celery_app import app, settings

    app.send_task(
        NOTIFY_TASK,
        args=[fit_id, attempt],
        queue=settings.notify_queue,
        countdown=countdown or None,
    )


def notify_final(store: JobStore, fit_id: str, status: FitStatus) -> None:
    """After a run made its fit final: send the first attempt of its notification, once. A
    failure to send is logged; the reconciler sends it later."""
    try:
        enqueue_first(store, send_notification, fit_id, status)
    except Exception:
        log.warning("fit %s: its notification was not sent; the reconciler will", fit_id)


# ----------------------------------------------------------------------------- attempts


def run_notification(fit_id: str, attempt: int, ctx: Context) -> None:
    """The body of the notify task: attempt ``attempt`` at the fit's notification, once."""
    store = ctx.store
    token = uuid.uuid4().hex
    if not store.lock_notification(fit_id, token, LOCK_TTL_S):
        log.info("fit %s: an attempt at its notification is running; dropped", fit_id)
        return
    try:
        _attempt(fit_id, attempt, ctx)
    finally:
        best_effort(lambda: store.unlock_notification(fit_id, token), what="unlock")


def _attempt(fit_id: str, attempt: int, ctx: Context) -> None:
    store, settings = ctx.store, ctx.settings
    record = store.get(fit_id)
    notification = record.notification if record is not None else None
    if record is None or notification is None or notification.status != "pending":
        store.drop_notification(fit_id)  # gone, or nothing left to send
        return
    if not record.status.is_final or notification.attempts >= attempt:
        log.info("fit %s: notification attempt %s is not due; dropped", fit_id, attempt)
        return
    attempt = notification.attempts + 1
    store.schedule_notification(fit_id, time.time())  # overdue REDELIVER_AFTER_S from now
    outcome = deliver(record, store.owner(fit_id) or "", attempt, settings)
    due, delay = _record(notification, outcome, attempt, settings)
    if not store.record_notification(fit_id, notification, due):
        return  # the fit was deleted meanwhile
    log.info(
        "fit %s: notification attempt %s: %s, now %s",
        fit_id,
        attempt,
        outcome.status_code or outcome.error,
        notification.status.value,
    )
    if due is not None:
        send_notification(fit_id, attempt + 1, countdown=delay)


def _record(
    notification: Notification, outcome: Outcome, attempt: int, settings: Settings
) -> tuple[float | None, float]:
    """Update ``notification`` with an attempt's outcome: when the next attempt is due
    (None: it is over) and in how many seconds."""
    notification.attempts = attempt
    notification.last_status_code = outcome.status_code
    notification.last_error = outcome.error
    notification.next_attempt_at = None
    if outcome.result == "delivered":
        notification.status = NotificationStatus.DELIVERED
        notification.delivered_at = datetime.now(UTC)
    elif outcome.result == "retry" and attempt < settings.webhook_max_attempts:
        delay = backoff_s(attempt, settings.webhook_backoff_s, settings.webhook_backoff_cap_s)
        due = time.time() + delay
        notification.next_attempt_at = datetime.fromtimestamp(due, UTC)
        return due, delay
    elif outcome.result == "refused":
        notification.status = NotificationStatus.REFUSED
    else:
        notification.status = NotificationStatus.FAILED
    return None, 0.0


def notification_body(record: FitResource) -> bytes:
    """What a notification posts: the fit as ``GET /v1/fits/{id}`` answers it, without its
    ``notification`` (which the delivery is changing)."""
    return record.model_copy().with_links().model_dump_json(exclude={"notification"}).encode()


def deliver(record: FitResource, owner: str, attempt: int, settings: Settings) -> Outcome:
    """One signed POST of the fit's notification to its URL, checked again first."""
    assert record.notification is not None
    secret = settings.webhook_secret
    try:
        target = check_url(record.notification.url, settings)
    except RefusedTarget as exc:
        return Outcome("refused", error=str(exc))
    if secret is None:  # the settings refuse hosts without a secret; never sent unsigned
        return Outcome("refused", error="webhooks are off on this service")
    body = notification_body(record)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Hbm-Event": event_name(record.status),
        "X-Hbm-Delivery": delivery_id(record.id, record.status),
        "X-Hbm-Attempt": str(attempt),
        "X-Hbm-Timestamp": str(timestamp),
        "X-Signature": sign(signing_secret(secret.get_secret_value(), owner), timestamp, body),
    }
    return asyncio.run(post(target, body, headers, allow_private=settings.webhook_allow_private))


# -------------------------------------------------------------------------------- HTTP


def classify(status_code: int) -> Outcome:
    """What an answer means: 2xx delivered; 408, 429 and 5xx retried; anything else final."""
    answered = f"the receiver answered {status_code}"
    if 200 <= status_code < 300:
        return Outcome("delivered", status_code)
    if status_code in (408, 429) or status_code >= 500:
        return Outcome("retry", status_code, answered)
    if 300 <= status_code < 400:
        return Outcome("failed", status_code, f"{answered}, a redirect, which is not followed")
    return Outcome("failed", status_code, answered)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, once, in the resolver's order."""
    loop = asyncio.get_running_loop()
    lookup = partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in await loop.run_in_executor(_resolver, lookup):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def checked_addresses(target: Target, *, allow_private: bool) -> list[IPAddress]:
    """The addresses an attempt may connect to: the URL's own, or every address its name
    resolves to, each allowed (``RefusedTarget`` if any is not)."""
    literal = target.literal
    addresses = [literal] if literal is not None else await resolve(target.host, target.port)
    if not addresses:
        raise socket.gaierror("no address")
    for address in addresses:
        check_address(address, allow_private=allow_private)
    return addresses


def build_request(
    client: httpx.AsyncClient,
    target: Target,
    address: IPAddress,
    body: bytes,
    headers: dict[str, str],
) -> httpx.Request:
    """The POST to ``address`` (pinned), with the URL's host as Host header and, for https
    to a name, as the TLS server name its certificate is verified against."""
    extensions: dict[str, Any] = {}
    if target.scheme == "https" and target.literal is None:
        extensions["sni_hostname"] = target.host
    return client.build_request(
        "POST",
        target.url_for(address),
        content=body,
        headers=headers | {"Host": target.host_header},
        extensions=extensions,
    )


async def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    total_s: float = TOTAL_TIMEOUT_S,
) -> Outcome:
    """One attempt: resolve and check, connect to a checked address, POST, read a little."""
    try:
        async with asyncio.timeout(total_s):
            addresses = await checked_addresses(target, allow_private=allow_private)
            timeout = httpx.Timeout(total_s, connect=CONNECT_TIMEOUT_S)
            async with httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, trust_env=False
            ) as client:
                for address in addresses:
                    request = build_request(client, target, address, body, headers)
                    try:
                        response = await client.send(request, stream=True)
                    except httpx.ConnectError:
                        if address == addresses[-1]:
                            raise
                        continue
                    try:
                        await _read_some(response)
                    finally:
                        await response.aclose()
                    return classify(response.status_code)
    except RefusedTarget as exc:
        return Outcome("refused", error=str(exc))
    except socket.gaierror:
        return Outcome("retry", error="the host name did not resolve")
    except (TimeoutError, httpx.TimeoutException):
        return Outcome("retry", error=f"no answer within the time limit ({total_s:g} s)")
    except httpx.ConnectError:
        return Outcome("retry", error="could not connect (refused, unreachable or TLS failed)")
    except (httpx.HTTPError, OSError):
        return Outcome("retry", error="the exchange with the receiver failed")
    raise AssertionError("unreachable: every address was tried")


async def _read_some(response: httpx.Response) -> None:
    """Read at most about ``MAX_ANSWER_BYTES`` of the answer (then close it)."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= MAX_ANSWER_BYTES:
            return
