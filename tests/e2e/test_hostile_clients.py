"""Hostile and careless clients against a running API: huge bodies and uploads, slow
headers and bodies, a deleted fit's key reused. Nothing stalls the service (health answers
throughout), nothing grows the API's memory beyond its bounds, and nothing answers for the
wrong model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.conftest import QUICK, Deployment, wait_for_fit

pytestmark = pytest.mark.e2e


def api_rss_mb(deployment: Deployment) -> float:
    return float(psutil.Process(deployment.processes["api"].pid).memory_info().rss) / 2**20


@contextmanager
def watching_health(deployment: Deployment) -> Iterator[list[float]]:
    """Health checked every 50 ms while inside; yields the latencies (seconds)."""
    latencies: list[float] = []
    done = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=deployment.base_url, timeout=30) as own:
            while not done.is_set():
                asked = time.monotonic()
                assert own.get("/v1/healthz").status_code == 200
                latencies.append(time.monotonic() - asked)
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield latencies
    finally:
        done.set()
        watcher.join()


def over_the_limits(
    deployment: Deployment, send: Callable[[httpx.Client], httpx.Response]
) -> tuple[httpx.Response, list[float], float]:
    """Send a request far over the limits; its answer, health latencies, API RSS growth."""
    before = api_rss_mb(deployment)
    with watching_health(deployment) as latencies, deployment.client() as client:
        response = send(client)
    return response, latencies, api_rss_mb(deployment) - before


def test_a_huge_csv_upload_is_refused_at_the_row_limit_without_stalling(
    deployment: Deployment,
) -> None:
    rows = b"".join(b"%d,%d.5\n" % (i % 977, i % 13) for i in range(5_000_000))  # ~48 MiB

    def upload(client: httpx.Client) -> httpx.Response:
        return client.post(
            "/v1/fits/upload",
            files={"file": ("big.csv", b"school,score\n" + rows, "text/csv")},
            data={"request": '{"formula": "score ~ (1 | school)"}'},
        )

    response, latencies, growth = over_the_limits(deployment, upload)
    assert response.status_code == 422, response.text
    assert "rows" in response.json()["errors"][0]["message"]
    assert max(latencies) < 0.5, max(latencies)
    assert growth < 150, f"the API grew by {growth:.0f} MiB"


def test_a_huge_json_body_is_refused_at_the_row_limit_without_stalling(
    deployment: Deployment,
) -> None:
    payload = (
        b'{"formula": "score ~ (1 | school)", "data": ['
        + b",".join([b'{"school": 17, "score": 1.25}'] * 1_400_000)  # ~42 MiB
        + b"]}"
    )

    def post(client: httpx.Client) -> httpx.Response:
        return client.post(
            "/v1/fits", content=payload, headers={"content-type": "application/json"}
        )

    response, latencies, growth = over_the_limits(deployment, post)
    assert response.status_code == 422, response.text
    assert "200000 rows" in response.json()["errors"][0]["message"]
    assert max(latencies) < 0.5, max(latencies)
    assert growth < 150, f"the API grew by {growth:.0f} MiB"


def raw_exchange(deployment: Deployment, sent: bytes, wait_s: float) -> tuple[bytes, float]:
    """Send ``sent`` on a raw connection and read until the server closes it."""
    port = int(deployment.base_url.rsplit(":", 1)[1])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(sent)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received, time.monotonic() - started


def test_slow_headers_and_slow_bodies_are_cut_off(deployment: Deployment) -> None:
    # headers never completed: 408 and closed after the header timeout (3 s here)
    answer, seconds = raw_exchange(deployment, b"POST /v1/fits HTTP/1.1\r\nHost: x\r\n", 20)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 2.5 < seconds < 6, seconds
    # a body that stops arriving: 408 once no chunk came for a sixth of the body timeout
    head = (
        b"POST /v1/fits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    answer, seconds = raw_exchange(deployment, head + b'{"formula": ', 20)
    assert b" 408 " in answer.split(b"\r\n", 1)[0], answer
    assert seconds < 4, seconds


def test_hundreds_of_slow_connections_are_closed_and_health_still_answers(
    deployment: Deployment,
) -> None:
    port = int(deployment.base_url.rsplit(":", 1)[1])
    sockets = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/fits HTTP/1.1\r\nHost: x\r\nContent-Len")
        sockets.append(sock)
    try:
        with watching_health(deployment) as latencies:
            time.sleep(5)
        closed = 0
        for sock in sockets:
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
                closed += 1
            except TimeoutError:
                pass
        assert closed == len(sockets)
        assert max(latencies) < 0.5, max(latencies)
    finally:
        for sock in sockets:
            sock.close()


def test_a_deleted_fits_model_never_answers_for_its_successor(
    client: httpx.Client,
) -> None:
    headers = {"Idempotency-Key": "k-123"}

    def fit(slope: float) -> str:
        data = {"x": [float(i) for i in range(30)], "y": [slope * i for i in range(30)]}
        data["y"] = [v + (0.1 if i % 2 else -0.1) for i, v in enumerate(data["y"])]
        body: dict[str, Any] = {"data": data, "formula": "y ~ x", "sampler": QUICK}
        response = client.post("/v1/fits", json=body, headers=headers)
        assert response.status_code == 202, response.text
        location: str = response.headers["location"]
        assert wait_for_fit(client, location)["status"] == "succeeded"
        return location

    def predicted(location: str) -> float:
        response = client.post(location + "/predictions", json={"data": {"x": [10.0]}})
        assert response.status_code == 200, response.text
        return float(response.json()["rows"][0]["mean"])

    def summary_at_90(location: str) -> dict[str, float]:
        response = client.get(location + "/summary", params={"prob": 0.9})
        return {p["name"]: p["mean"] for p in response.json()["parameters"]}

    first = fit(1.3)
    assert predicted(first) == pytest.approx(13.0, abs=0.5)  # warms the worker's cache
    assert summary_at_90(first)["x"] == pytest.approx(1.3, abs=0.1)
    assert client.delete(first).status_code == 204
    second = fit(-5.7)
    assert second != first
    assert predicted(second) == pytest.approx(-57.0, abs=0.5)
    assert summary_at_90(second)["x"] == pytest.approx(-5.7, abs=0.1)
