"""Load: many clients submit at once. Every accepted fit reaches a final state, none is lost
or duplicated, and beyond the per-key quota the API answers 429 with Retry-After. (The
full-size run, 1,000 submissions from 50 clients, is ``python -m bench.load``.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.conftest import Deployment, deployed, pool_children

pytestmark = pytest.mark.e2e

SUBMISSIONS = 60
CLIENTS = 20
QUOTA = 24


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from deployed(tmp_path_factory, 12, HBM_SUBMISSIONS_PER_MINUTE=str(QUOTA))


def test_concurrent_clients_lose_nothing_and_meet_the_quota(
    loaded: Deployment, seed_records: list[dict[str, Any]]
) -> None:
    small = seed_records[:120]

    def submit(i: int) -> httpx.Response:
        body = {
            "data": small,
            "formula": "score ~ (1 | school)",
            "sampler": {"draws": 100, "tune": 100, "chains": 1, "seed": i},
        }
        with loaded.client() as client:
            return client.post("/v1/fits", json=body)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        answers = list(pool.map(submit, range(SUBMISSIONS)))
    windows = 1 + int(time.monotonic() - started) // 60 + 1
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 429]
    assert len(accepted) + len(refused) == SUBMISSIONS
    assert QUOTA <= len(accepted) <= QUOTA * windows
    assert len(set(accepted)) == len(accepted)  # distinct seeds: distinct fits
    for answer in refused:
        assert int(answer.headers["retry-after"]) > 0
        assert answer.headers["content-type"] == "application/problem+json"

    with loaded.client() as client:
        deadline = time.monotonic() + 600
        pending = set(accepted)
        while pending and time.monotonic() < deadline:
            pending = {
                fit_id
                for fit_id in pending
                if client.get(f"/v1/fits/{fit_id}").json()["status"] in ("queued", "running")
            }
            time.sleep(1)
        assert not pending, f"{len(pending)} fits never finished"
        finals = [client.get(f"/v1/fits/{i}").json() for i in accepted]
        assert all(f["status"] == "succeeded" for f in finals)
        assert all(f["attempts"] == 1 for f in finals)  # each sampled exactly once
        listed = client.get("/v1/fits", params={"limit": 100}).json()
        assert sorted(f["id"] for f in listed) == sorted(accepted)


def test_fit_workers_sample_at_a_lower_cpu_priority_than_requests_are_answered(
    loaded: Deployment,
) -> None:
    """On a shared host, sampling yields the CPU to the API and the interactive worker."""
    nice = {name: psutil.Process(p.pid).nice() for name, p in loaded.processes.items()}
    pools = pool_children(loaded.processes["worker-fits"].pid)
    assert nice["worker-fits"] == nice["api"] + 10 == nice["worker-interactive"] + 10
    assert pools and all(pool.nice() == nice["worker-fits"] for pool in pools)
