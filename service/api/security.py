"""Who is calling (API keys, hashed at rest) and how much they may send, checked before
anything reads the request body.

- ``Authenticate`` (ASGI middleware): with ``HBM_API_KEY_HASHES`` set, every ``/v1`` route
  but the health checks needs an ``X-API-Key`` (or ``Authorization: Bearer``) header whose
  SHA-256 digest is listed; else 401 at once, the body unread. The key's digest is the
  request's owner: a fit is visible only to the key that created it (others get 404).
  Without hashes the service asks for no key (local use) and every caller is the same
  anonymous owner. Browsers, which cannot set headers on an ``EventSource`` or an ``<img>``,
  may instead hold the key in the HttpOnly, SameSite=Strict cookie ``hbm_key`` that a page
  opened once as ``?key=KEY`` sets (``service.api.ui``); the cookie counts for GET and HEAD
  requests only, and ``?key=`` only on the pages themselves.
- ``BodyGuard`` (ASGI middleware) bounds what a body may cost: 413 for a body over
  ``max_body_bytes`` (at once from ``Content-Length``, or as soon as a chunked body streams
  past it); 408 for a body that arrives too slowly (``body_timeout_s`` in all, a sixth of it
  between chunks); 503 with Retry-After when the process already holds
  ``max_bodies_in_flight_bytes`` of bodies (many large uploads at once).
Slow headers are cut off by the server itself (``service.api.server``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from typing import Annotated
from urllib.parse import parse_qsl, quote, unquote

from fastapi import Depends, Request
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import Caller, ServicesDep
from service.api.problems import response_for
from service.core.errors import (
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    Unavailable,
)

#: Paths under /v1 that need no key.
OPEN_PATHS = frozenset({"/v1/healthz", "/v1/readyz"})
#: The cookie a browser holds its key in, and the query parameter a page takes it from once.
KEY_COOKIE = "hbm_key"
KEY_QUERY = "key"
#: The pages that take ``?key=`` (and set the cookie).
PAGE_PATH = re.compile(r"/v1/ui|/v1/fits/[^/]+/report")
#: Methods a cookie authenticates: reading only, so a forged request cannot change anything.
COOKIE_METHODS = frozenset({"GET", "HEAD"})


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of an API key: what settings hold and fits are owned by."""
    return hashlib.sha256(key.encode()).hexdigest()


def cookie_value(key: str) -> str:
    """How a key is written in the ``hbm_key`` cookie (percent-encoded)."""
    return quote(key, safe="")


def browser_key(scope: Scope) -> str:
    """The key a browser presents without headers: ``?key=`` on a page, else the cookie,
    for GET and HEAD requests only ("" otherwise)."""
    if scope.get("method") not in COOKIE_METHODS:
        return ""
    if PAGE_PATH.fullmatch(scope["path"]):
        raw: bytes = scope.get("query_string", b"")
        query = dict(parse_qsl(raw.decode("latin-1")))
        if query.get(KEY_QUERY):
            return query[KEY_QUERY].strip()
    cookies = dict(scope.get("headers", [])).get(b"cookie")
    if cookies:
        return unquote(cookie_parser(cookies.decode("latin-1")).get(KEY_COOKIE, "")).strip()
    return ""


def owner_of(headers: dict[bytes, bytes], hashes: list[str], fallback: str = "") -> str:
    """The owner a request acts for (a key's digest; empty without keys), or 401. The key
    is the ``X-API-Key`` header, else a bearer token, else ``fallback`` (a browser's)."""
    if not hashes:
        return ""
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if not key and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    key = key or fallback
    if not key:
        raise Unauthorized("send an API key in the X-API-Key header")
    digest = key_digest(key)
    if not any(hmac.compare_digest(digest, known) for known in hashes):
        raise Unauthorized("the API key is not valid")
    return digest


async def refuse(error: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``error`` and close the connection (the body may be left unread)."""
    response = response_for(error)
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


class Authenticate:
    """ASGI middleware: the caller's key is checked before the route reads anything."""

    def __init__(self, app: ASGIApp, hashes: list[str]) -> None:
        self.app = app
        self.hashes = hashes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            if scope["path"] in OPEN_PATHS:
                owner = ""
            else:
                try:
                    headers = dict(scope.get("headers", []))
                    fallback = browser_key(scope) if self.hashes else ""
                    owner = owner_of(headers, self.hashes, fallback)
                except Unauthorized as exc:
                    await refuse(exc, scope, receive, send)
                    return
            scope.setdefault("state", {})["owner"] = owner
        await self.app(scope, receive, send)


async def get_caller(request: Request, services: ServicesDep) -> Caller:
    """The calling key's identity, as ``Authenticate`` established it.

    ``async`` because it does no I/O: FastAPI runs it on the event loop instead of
    handing it to a thread (a thread hop per dependency adds up under load)."""
    owner = request.scope.get("state", {}).get("owner")
    if owner is None:  # outside the middleware (never for /v1 routes)
        owner = owner_of(dict(request.scope.get("headers", [])), services.settings.api_key_hashes)
    return Caller(services, owner=owner)


CallerDep = Annotated[Caller, Depends(get_caller)]


class _Refused(Exception):
    """Raised inside ``receive`` when a body must be refused."""

    def __init__(self, error: ServiceError) -> None:
        self.error = error


class BodyGuard:
    """ASGI middleware bounding each request body's size and arrival time, and the bodies
    one process holds at once."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float, in_flight_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s
        self.in_flight_limit = in_flight_limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else 0
        if declared > self.limit:
            await refuse(self._too_large(), scope, receive, send)
            return
        if declared and self.in_flight + declared > self.in_flight_limit:
            await refuse(self._busy(), scope, receive, send)
            return
        held = 0
        deadline = time.monotonic() + self.timeout_s
        failure: ServiceError | None = None
        answered = complete = False

        async def guarded_receive() -> Message:
            nonlocal held, failure, complete
            if complete:  # after the body: e.g. waiting for a disconnect, untimed
                return await receive()
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(left, self.timeout_s / 6)))
            except TimeoutError:
                failure = RequestTimeout(
                    f"the request body did not arrive within {self.timeout_s:.0f} s"
                )
                raise _Refused(failure) from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                chunk = len(message.get("body", b""))
                held += chunk
                self.in_flight += chunk
                if held > self.limit:
                    failure = self._too_large()
                    raise _Refused(failure)
                if self.in_flight > self.in_flight_limit:
                    failure = self._busy()
                    raise _Refused(failure)
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers to a body cut short, the client gets the refusal.
            nonlocal answered
            if failure is None:
                await send(message)
            elif not answered:
                answered = True
                await refuse(failure, scope, receive, send)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _Refused as exc:
            if not answered:
                await refuse(exc.error, scope, receive, send)
        finally:
            self.in_flight -= held

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is over {self.limit} bytes")

    def _busy(self) -> Unavailable:
        return Unavailable("the service is receiving many large requests; retry shortly")
