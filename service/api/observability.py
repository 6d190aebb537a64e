"""``Observe`` (ASGI middleware, outermost): each request's id, and its metrics.

- The request id is the client's ``X-Request-ID`` when it is safe (1 to 128 letters,
  digits and ``._:-``), else a fresh one. It is returned in the response's
  ``X-Request-ID``, carried by every log line of the request (``service.core.logs``), stored
  with a fit the request creates, and sent to the workers in the headers of the tasks the
  request queues (``carry_request_id``).
- Every request is counted by route template (``/v1/fits/{fit_id}``, never the raw path: no
  id becomes a label; ``unmatched`` for a path no route serves), method and status, and
  timed; requests refused before routing (401, 413) are matched to their route here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from celery.signals import before_task_publish
from fastapi import routing
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core import logs
from service.core.metrics import HTTP_DURATION, HTTP_REQUESTS, RECORDER, Recorder

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
#: FastAPI's walk through included routers (0.16x; before, ``app.routes`` is already flat).
iter_route_contexts = getattr(routing, "iter_route_contexts", None)


def carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Celery's ``before_task_publish``: a task queued during a request carries its id."""
    request_id = logs.current_request_id()
    if request_id is not None and headers is not None:
        headers.setdefault(logs.TASK_HEADER, request_id)


class Observe:
    """ASGI middleware: the request id, and the request counted and timed."""

    def __init__(
        self, app: ASGIApp, routes: Sequence[BaseRoute], recorder: Recorder = RECORDER
    ) -> None:
        self.app = app
        self.routes = routes
        self.recorder = recorder
        self._table: list[tuple[re.Pattern[str], str, frozenset[str] | None]] | None = None
        before_task_publish.connect(carry_request_id, weak=False, dispatch_uid="hbm-request-id")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"x-request-id")
        request_id = logs.request_id_or_new(raw.decode("latin-1") if raw else None)
        token = logs.set_request_id(request_id)
        started = time.perf_counter()
        status = 500  # unless a response starts: an error escaped (answered 500 outside)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.record(scope, status, time.perf_counter() - started)
        # Left set when an error escapes: the server's log line about it names the request.
        logs.reset_request_id(token)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        """Count and time one answered request."""
        route = self.template(scope)
        method = scope["method"] if scope["method"] in METHODS else "other"
        self.recorder.inc(HTTP_REQUESTS, (route, method, str(status)))
        self.recorder.observe(HTTP_DURATION, seconds, (route, method))

    def template(self, scope: Scope) -> str:
        """The template of the route that serves (or would serve: requests refused before
        routing) the request, chosen as the router does; ``unmatched`` if none would."""
        path, method = scope["path"], scope["method"]
        partial = None
        for regex, template, methods in self.table():
            if regex.match(path):
                if methods is None or method in methods:
                    return template
                partial = partial or template  # the path exists, not the method: 405
        return partial or UNMATCHED

    def table(self) -> list[tuple[re.Pattern[str], str, frozenset[str] | None]]:
        """Every route's path pattern, template and methods, in routing order (built on
        the first request, once every router is included)."""
        if self._table is None:
            flat = iter_route_contexts(self.routes) if iter_route_contexts else self.routes
            table = []
            for route in flat:
                regex, template = getattr(route, "path_regex", None), getattr(route, "path", None)
                if regex is not None and isinstance(template, str):
                    methods = getattr(route, "methods", None)
                    table.append((regex, template, frozenset(methods) if methods else None))
            self._table = table
        return self._table
