"""A scripted service (httpx.MockTransport answering from a script of canned responses per
route, recording every request) and a fake clock, so that retries and waits are tested
without a server and without sleeping."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from hbm_client import _core, _plans

Answer = httpx.Response | Exception


def record(status: str = "succeeded", **fields: Any) -> dict[str, Any]:
    """A fit record as the service sends it, with a field no client knows yet."""
    return {
        "id": "f1",
        "status": status,
        "name": None,
        "formula": "score ~ (1 | school)",
        "family": "gaussian",
        "n_obs": 4,
        "sampler": {"draws": 10, "tune": 10, "chains": 2, "seed": 1, "target_accept": 0.8},
        "created_at": "2026-01-01T00:00:00Z",
        "progress": None,
        "error": None,
        "links": {"self": "/v1/fits/f1"},
        "a_field_from_a_newer_service": {"anything": [1, 2]},
        **fields,
    }


def running(done: int) -> dict[str, Any]:
    """A running fit's record, both chains at ``done`` of 20 draws."""
    chains = [
        {"chain": c, "draws_done": done, "draws_total": 20, "tuning": done < 10, "divergences": 0}
        for c in (0, 1)
    ]
    return record(
        "running", progress={"phase": "sampling", "fraction": done / 20, "chains": chains}
    )


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    """A problem+json answer."""
    body = {"type": "about:blank", "title": f"title {status}", "status": status, "detail": detail}
    headers = {"Content-Type": "application/problem+json"}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra.pop("retry_after"))
    return httpx.Response(status, content=json.dumps(body | extra), headers=headers)


def events(*records: dict[str, Any], first_id: int = 1) -> httpx.Response:
    """A stream of Server-Sent Events as the service sends them, one per record, with
    a heartbeat first; it ends after the records."""
    lines = [": heartbeat", ""]
    for number, fit in enumerate(records, start=first_id):
        kind = "end" if fit["status"] in ("succeeded", "failed", "cancelled") else "progress"
        lines += [f"event: {kind}", f"id: {number}", f"data: {json.dumps(fit)}", ""]
    content = "\r\n".join(lines).encode() + b"\r\n"
    return httpx.Response(200, content=content, headers={"Content-Type": "text/event-stream"})


class Broken(httpx.SyncByteStream):
    """A body that breaks after its first bytes."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise httpx.ReadError("connection reset")


@dataclass
class Service:
    """Answers each ``(method, path)`` with the next scripted answer (the last one repeats);
    an exception is raised as the transport's error."""

    script: dict[tuple[str, str], list[Answer]] = field(default_factory=lambda: defaultdict(list))
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Answer | dict[str, Any]) -> None:
        """Script the answers of a route; a dict is a 200 JSON answer."""
        self.script[(method, path)] += [
            httpx.Response(200, json=a) if isinstance(a, dict) else a for a in answers
        ]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answers = self.script.get((request.method, request.url.path))
        if not answers:
            return problem(404, f"nothing scripted for {request.method} {request.url.path}")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer.stream, httpx.ByteStream):  # a copy: a client consumes its answer
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        return answer

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        return self.handle(request)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        """The requests sent to a route, in order."""
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def async_transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle_async)


class Clock:
    """Stands for ``time`` and ``asyncio`` in the client's plans and runners: sleeping only
    moves the clock, and each wait is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def _advance(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def sleep(self, seconds: float) -> Any:
        """Both ``time.sleep`` and ``asyncio.sleep``: awaiting the result is a no-op."""
        self._advance(seconds)
        return _Done()


class _Done:
    def __await__(self) -> Iterator[None]:
        return iter(())


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_core, "time", fake)  # deadlines
    monkeypatch.setattr(_plans, "time", fake)  # the runners' sleeps
    monkeypatch.setattr(_plans, "asyncio", fake)
    return fake
