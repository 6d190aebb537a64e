"""Who is calling (API keys, hashed at rest) and how much they may send.

- With ``HBM_API_KEY_HASHES`` set, every ``/v1`` route but the health checks needs an
  ``X-API-Key`` (or ``Authorization: Bearer``) header whose SHA-256 digest is listed; a fit
  is visible only to the key that created it (others get 404). Without hashes the service
  asks for no key (local use) and every caller is the same anonymous owner.
- ``BodyLimit`` answers 413 for bodies over the limit before anything parses them: at once
  from ``Content-Length``, or as soon as a chunked body streams past the limit.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import Caller, ServicesDep
from service.api.problems import response_for
from service.core.errors import PayloadTooLarge, Unauthorized


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of an API key: what settings hold and fits are owned by."""
    return hashlib.sha256(key.encode()).hexdigest()


async def get_caller(request: Request, services: ServicesDep) -> Caller:
    """The calling key's identity, or 401 when keys are required and this one is not valid.

    ``async`` because it does no I/O: FastAPI runs it on the event loop instead of
    handing it to a thread (a thread hop per dependency adds up under load)."""
    hashes = services.settings.api_key_hashes
    if not hashes:
        return Caller(services, owner="")
    key = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    if key is None and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    if not key:
        raise Unauthorized("send an API key in the X-API-Key header")
    digest = key_digest(key)
    if not any(hmac.compare_digest(digest, known) for known in hashes):
        raise Unauthorized("the API key is not valid")
    return Caller(services, owner=digest)


CallerDep = Annotated[Caller, Depends(get_caller)]


class BodyTooLarge(Exception):
    """Raised inside ``receive`` when a streamed body passes the limit."""


class BodyLimit:
    """ASGI middleware: 413 problem+json for request bodies over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        exceeded = refused = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers to a body cut short, the client gets the 413.
            nonlocal refused
            if not exceeded:
                await send(message)
            elif not refused:
                refused = True
                await self._refuse(scope, receive, send)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not refused:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = response_for(PayloadTooLarge(f"the request body is over {self.limit} bytes"))
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
