"""Plans and their two runners. Every operation of the client (``_core``) is written once,
without I/O, as a *plan*: a generator that yields steps and returns the operation's result.

Its steps:

- ``Send(request)``: it receives the response, read whole;
- ``Sleep(seconds)``: it receives None;
- ``Stream(request)``: it receives the response's head, then a line of its body at each
  ``ReadLine()`` (None at its end); the stream closes at the plan's next other step.

A transport's error is thrown into the plan at the step that met it. ``Client`` and
``AsyncClient`` only run plans (``run_sync``, ``run_async``): they send with httpx and
sleep, blocking or awaiting. Retries, error mapping, parsing and the wait for a fit
therefore behave the same in both, and are tested once with ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import cast

import httpx


@dataclass(frozen=True)
class Send:
    """Send ``request``; the plan receives the response, read whole."""

    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` before the next step."""

    seconds: float


@dataclass(frozen=True)
class Stream:
    """Send ``request`` and keep its body open, to be read by ``ReadLine`` steps."""

    request: httpx.Request


@dataclass(frozen=True)
class ReadLine:
    """The open stream's next line (without its end), or None at the end of the body."""


Step = Send | Sleep | Stream | ReadLine
type Plan[T] = Generator[Step, httpx.Response | str | None, T]


def run_sync[T](plan: Plan[T], http: httpx.Client) -> T:
    """Run ``plan`` with ``http``, sleeping with ``time.sleep``."""
    stream: httpx.Response | None = None
    lines: Iterator[str] = iter(())
    try:
        step = next(plan)
        while True:
            if stream is not None and not isinstance(step, ReadLine):
                stream.close()
                stream = None
            reply: httpx.Response | str | None = None
            try:
                if isinstance(step, Send):
                    reply = http.send(step.request)
                elif isinstance(step, Stream):
                    reply = stream = http.send(step.request, stream=True)
                    lines = stream.iter_lines()
                elif isinstance(step, ReadLine):
                    reply = next(lines, None)
                else:
                    time.sleep(step.seconds)
            except httpx.TransportError as exc:
                step = plan.throw(exc)
            else:
                step = plan.send(reply)
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        if stream is not None:
            stream.close()
        plan.close()


async def run_async[T](plan: Plan[T], http: httpx.AsyncClient) -> T:
    """Run ``plan`` with ``http``, sleeping with ``asyncio.sleep``."""
    stream: httpx.Response | None = None
    lines: AsyncIterator[str] | None = None
    try:
        step = next(plan)
        while True:
            if stream is not None and not isinstance(step, ReadLine):
                await stream.aclose()
                stream = None
            reply: httpx.Response | str | None = None
            try:
                if isinstance(step, Send):
                    reply = await http.send(step.request)
                elif isinstance(step, Stream):
                    reply = stream = await http.send(step.request, stream=True)
                    lines = stream.aiter_lines()
                elif isinstance(step, ReadLine):
                    assert lines is not None
                    reply = await anext(lines, None)
                else:
                    await asyncio.sleep(step.seconds)
            except httpx.TransportError as exc:
                step = plan.throw(exc)
            else:
                step = plan.send(reply)
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        if stream is not None:
            await stream.aclose()
        plan.close()
