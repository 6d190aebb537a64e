"""Waiting on a fit follows its Server-Sent Events (``GET /v1/fits/{id}/events``) where the
service streams them: no polling, a stream that closed early is opened again after the last
event seen; where the service has no stream, refuses one or it breaks, the wait polls."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from conftest import Broken, Clock, Service, events, problem, record, running

from hbm_client import AsyncClient, Client, FitFailed

URL = "http://hbm.test"
EVENTS = "/v1/fits/f1/events"


def test_a_fit_is_followed_by_its_events_without_polling(
    service: Service, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    service.on("POST", "/v1/fits", record("queued"))
    service.on("GET", EVENTS, events(record("queued"), running(5), running(15), record()))
    fit = Client(URL, transport=service.transport()).fit({"y": [1.0]}, "y ~ 1")
    assert fit.status == "succeeded"
    assert service.sent("GET", "/v1/fits/f1") == []
    assert clock.sleeps == []
    (stream,) = service.sent("GET", EVENTS)
    assert stream.headers["Accept"] == "text/event-stream"
    assert "Last-Event-ID" not in stream.headers
    assert "chain 1" in capsys.readouterr().err


def test_a_stream_that_closed_early_is_opened_again_after_the_last_event(
    service: Service, clock: Clock
) -> None:
    service.on("GET", "/v1/fits/f1", record("running"))
    service.on("GET", EVENTS, events(running(5), running(6)), events(record(), first_id=3))
    fit = Client(URL, transport=service.transport()).get_fit("f1")
    assert fit.wait(progress=False).status == "succeeded"
    first, second = service.sent("GET", EVENTS)
    assert "Last-Event-ID" not in first.headers
    assert second.headers["Last-Event-ID"] == "2"
    assert len(service.sent("GET", "/v1/fits/f1")) == 1  # get_fit's own read


def test_a_failed_end_event_raises_fit_failed(service: Service, clock: Clock) -> None:
    error = {"reason": "timeout", "message": "past 60 s"}
    service.on("GET", "/v1/fits/f1", record("running"))
    service.on("GET", EVENTS, events(running(5), record("failed", error=error)))
    fit = Client(URL, transport=service.transport()).get_fit("f1")
    with pytest.raises(FitFailed) as raised:
        fit.wait(progress=False)
    assert raised.value.reason == "timeout"


@pytest.mark.parametrize(
    "refusal",
    [
        problem(404, "no such route"),  # a service without streams
        problem(429, "10 event streams are already open", retry_after=5),
        httpx.Response(200, json=record("running")),  # not a stream
        events(),  # closed at once
        httpx.ConnectError("refused"),
    ],
    ids=["404", "429", "json", "empty", "connect-error"],
)
def test_without_a_usable_stream_the_wait_polls(
    service: Service, clock: Clock, refusal: httpx.Response | Exception
) -> None:
    service.on("GET", "/v1/fits/f1", running(5), running(6), record())
    service.on("GET", EVENTS, refusal)
    fit = Client(URL, transport=service.transport(), max_retries=0).get_fit("f1")
    assert fit.wait(progress=False).status == "succeeded"
    assert len(service.sent("GET", EVENTS)) == 1
    assert len(service.sent("GET", "/v1/fits/f1")) == 3  # get_fit, then two polls
    assert clock.sleeps == [0.25]


def test_a_stream_that_breaks_midway_falls_back_to_polling(service: Service, clock: Clock) -> None:
    first = f"event: status\r\nid: 1\r\ndata: {json.dumps(running(5))}\r\n\r\n".encode()
    broken = httpx.Response(
        200, headers={"Content-Type": "text/event-stream"}, stream=Broken(first)
    )
    service.on("GET", "/v1/fits/f1", record())
    service.on("GET", EVENTS, broken)
    fit = Client(URL, transport=service.transport()).get_fit("f1")
    assert fit.wait(progress=False).status == "succeeded"
    assert len(service.sent("GET", "/v1/fits/f1")) == 2


def test_the_async_client_follows_events_too(service: Service, clock: Clock) -> None:
    service.on("POST", "/v1/fits", record("queued"))
    service.on("GET", EVENTS, events(running(5), record()))

    async def fit() -> str:
        async with AsyncClient(URL, transport=service.async_transport()) as hbm:
            return (await hbm.fit({"y": [1.0]}, "y ~ 1", progress=False)).status

    assert asyncio.run(fit()) == "succeeded"
    assert service.sent("GET", "/v1/fits/f1") == []
