"""The HTTP server: uvicorn with a deadline on request headers.

uvicorn times out idle keep-alive connections, but not a connection that is still sending
its request line and headers: a thousand clients that open a connection and trickle a
partial request held their sockets for minutes. ``TimedH11Protocol`` closes a connection
whose headers are not complete ``header_timeout_s`` after its first byte (or after the
previous response), answering 408. Bodies are timed by ``BodyGuard``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.core.settings import get_settings

#: Connections one API process serves at once; beyond, uvicorn answers 503.
MAX_CONNECTIONS = 2000

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\n"
    b"connection: close\r\ncontent-length: 111\r\n\r\n"
    b'{"type":"about:blank","title":"Request timeout","status":408,'
    b'"detail":"the request headers arrived too slowly"}'
)


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = get_settings().header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)
        super().data_received(data)
        if not self._between_requests():
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        """No request is being answered: the next bytes belong to a new request's head."""
        return self.cycle is None or self.cycle.response_complete

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.conn = h11.Connection(h11.SERVER)  # forget the partial request
            self.transport.close()


def serve() -> None:
    """Serve the API with uvicorn (host, port and log level from the settings)."""
    settings = get_settings()
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        workers=settings.api_workers,
        http=TimedH11Protocol,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=5,
    )
