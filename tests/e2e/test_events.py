"""A fit's live progress over HTTP as Server-Sent Events (``GET /v1/fits/{id}/events``),
against a real deployment with API keys: a running fit streams ``status`` and ``progress``
events (draws growing per chain) and ends with ``end`` carrying its final state; a finished
fit answers one ``end``; a client reconnecting with ``Last-Event-ID`` gets only newer state;
a key holds a limited number of streams (429 beyond) and never sees another key's fit."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment, deployed, wait_for_fit, wait_for_status

pytestmark = pytest.mark.e2e

KEY, OTHER_KEY = "events-key-1", "events-key-2"
STREAMS = 3


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from deployed(
        tmp_path_factory,
        11,
        HBM_API_KEY_HASHES=json.dumps([digest(KEY), digest(OTHER_KEY)]),
        HBM_MAX_STREAMS_PER_KEY=str(STREAMS),
        HBM_EVENTS_HEARTBEAT_S="1",
    )


@pytest.fixture
def client(keyed: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.base_url, timeout=120, headers={"X-API-Key": KEY}) as http:
        yield http


@dataclass
class Event:
    """One Server-Sent Event, or a comment (a heartbeat) when ``event`` is None."""

    event: str | None
    id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def events(response: httpx.Response) -> Iterator[Event]:
    """The events and comments of an event stream, as they arrive."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield Event(event=None)
        elif line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        elif fields:
            yield Event(
                fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])
            )
            fields = {}


def slow_fit(seed_records: list[dict[str, Any]], seed: int, draws: int = 2500) -> dict[str, Any]:
    """A fit that samples for seconds: a row-wise t likelihood on the seed study's rows
    ten times over."""
    return {
        "data": seed_records * 10,
        "formula": "score ~ (1 | school)",
        "family": "t",
        "sampler": {"draws": draws, "tune": 300, "chains": 2, "seed": seed},
        "name": f"slow {seed}",
    }


def submit(client: httpx.Client, request: dict[str, Any]) -> str:
    response = client.post("/v1/fits", json=request)
    assert response.status_code == 202, response.text
    fit_id: str = response.json()["id"]
    return fit_id


def draws_done(event: Event) -> int:
    progress = event.data.get("progress") or {}
    return sum(chain["draws_done"] for chain in progress.get("chains", []))


@pytest.fixture(scope="module")
def finished(keyed: Deployment, seed_records: list[dict[str, Any]]) -> dict[str, Any]:
    """A fit of key 1 that has succeeded, and the events its stream gave while it ran (it
    waited in the queue behind another fit first)."""
    with httpx.Client(base_url=keyed.base_url, timeout=120, headers={"X-API-Key": KEY}) as client:
        ahead = submit(client, slow_fit(seed_records, 1, draws=600))
        fit_id = submit(client, slow_fit(seed_records, 2))
        started = time.monotonic()
        with client.stream("GET", f"/v1/fits/{fit_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            seen = list(events(response))  # until the server closes the stream
        print(f"the stream of {fit_id} lasted {time.monotonic() - started:.1f} s")
        assert wait_for_fit(client, f"/v1/fits/{ahead}")["status"] == "succeeded"
    return {"id": fit_id, "events": seen}


def test_a_running_fit_streams_its_progress_and_ends_with_its_final_state(
    finished: dict[str, Any],
) -> None:
    seen = [e for e in finished["events"] if e.event is not None]
    kinds = [e.event for e in seen]
    assert kinds[0] == "status" and kinds[-1] == "end" and kinds.count("end") == 1
    assert set(kinds) == {"status", "progress", "end"}
    # Each event is the fit resource, numbered in order.
    assert all(e.data["id"] == finished["id"] for e in seen)
    numbers = [int(e.id or -1) for e in seen]
    assert numbers == sorted(set(numbers)) and numbers[0] >= 0
    # Statuses only move forward; a `status` event marks each change.
    order = ["queued", "running", "succeeded"]
    statuses = [e.data["status"] for e in seen]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    changes = [e.data["status"] for e in seen if e.event == "status"]
    assert changes == sorted(set(changes), key=order.index)
    # While sampling, the draws done grow, per chain, with the divergences so far.
    sampling = [
        e for e in seen if e.event == "progress" and e.data["progress"]["phase"] == "sampling"
    ]
    totals = [draws_done(e) for e in sampling]
    assert len(set(totals)) >= 3, totals
    assert totals == sorted(totals)
    chain = sampling[-1].data["progress"]["chains"][0]
    assert {"chain", "draws_done", "draws_total", "tuning", "divergences"} <= set(chain)
    assert chain["draws_total"] == 300 + 2500
    end = seen[-1].data
    assert end["status"] == "succeeded" and end["progress"] is None
    assert end["links"]["report"] == f"/v1/fits/{finished['id']}/report"


def test_a_stream_keeps_itself_alive_with_heartbeats(finished: dict[str, Any]) -> None:
    # The fit waited seconds in the queue and sampled for seconds: heartbeats came every 1 s.
    assert any(e.event is None for e in finished["events"][:-1])


def test_a_finished_fit_answers_one_end_event_and_closes(
    client: httpx.Client, finished: dict[str, Any]
) -> None:
    with client.stream("GET", f"/v1/fits/{finished['id']}/events") as response:
        seen = [e for e in events(response) if e.event is not None]
    assert [e.event for e in seen] == ["end"]
    assert seen[0].data["status"] == "succeeded"
    assert seen[0].id == finished["events"][-1].id


def test_a_client_reconnecting_with_its_last_event_id_gets_only_newer_state(
    client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    ahead = submit(client, slow_fit(seed_records, 3, draws=600))
    fit_id = submit(client, slow_fit(seed_records, 4, draws=300))
    with client.stream("GET", f"/v1/fits/{fit_id}/events") as response:
        first = next(e for e in events(response) if e.event is not None)
    # The client has seen the queued state: reconnecting, it is not sent again.
    assert (first.event, first.data["status"]) == ("status", "queued"), first
    resumed = {"Last-Event-ID": first.id or ""}
    with client.stream("GET", f"/v1/fits/{fit_id}/events", headers=resumed) as response:
        after = [e for e in events(response) if e.event is not None]
    assert after[0].data["status"] != "queued"
    assert int(after[0].id or 0) > int(first.id or 0)
    assert after[-1].event == "end" and after[-1].data["status"] == "succeeded"
    wait_for_fit(client, f"/v1/fits/{ahead}")


def test_a_key_holds_a_limited_number_of_open_streams(
    keyed: Deployment, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    fit_id = submit(client, slow_fit(seed_records, 5, draws=20_000))
    url = f"/v1/fits/{fit_id}/events"
    other = httpx.Client(base_url=keyed.base_url, timeout=120, headers={"X-API-Key": OTHER_KEY})
    try:
        with ExitStack() as streams:
            for _ in range(STREAMS):
                assert streams.enter_context(client.stream("GET", url)).status_code == 200
            refused = client.get(url)
            assert refused.status_code == 429
            assert refused.headers["content-type"] == "application/problem+json"
            assert "Retry-After" in refused.headers
            # The limit is per key: another key is not refused (its stream is a 404: not its fit).
            assert other.get(url).status_code == 404
        # Closed streams give their places back.
        deadline = time.monotonic() + 30
        while (status := _first_status(client, url)) == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
    finally:
        other.close()
        client.delete(f"/v1/fits/{fit_id}")
        wait_for_status(client, f"/v1/fits/{fit_id}", lambda f: f["status"] == "cancelled")


def _first_status(client: httpx.Client, url: str) -> int:
    with client.stream("GET", url) as response:
        return response.status_code


def test_another_key_gets_404_and_no_key_gets_401(
    keyed: Deployment, finished: dict[str, Any]
) -> None:
    url = f"{keyed.base_url}/v1/fits/{finished['id']}/events"
    other = httpx.get(url, headers={"X-API-Key": OTHER_KEY}, timeout=30)
    assert other.status_code == 404
    assert other.headers["content-type"] == "application/problem+json"
    assert httpx.get(url, timeout=30).status_code == 401
