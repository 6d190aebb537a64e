"""End-to-end fixtures: a real deployment (``tests.support.deployment``: the API and two
Celery workers as processes, real Redis) with fault timeouts of seconds, and helpers that
poll fits. Fits use small draws to stay fast."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import clean_redis, redis_url
from tests.support.deployment import Deployment, free_port, pool_children
from tests.support.deployment import deploy as shared_deploy

__all__ = ["QUICK", "Deployment", "deploy", "deployed", "free_port", "pool_children"]

pytestmark = pytest.mark.e2e

#: Small but honest MCMC settings for tests.
QUICK = {"draws": 300, "tune": 300, "chains": 2}


#: What the fault tests want noticed in seconds, not after the production timeouts: a lost
#: worker, a hung Redis, a slow client.
FAST_FAULTS = {
    "HBM_LOCK_TTL_S": "3",
    "HBM_LOCK_GRACE_S": "2",
    "HBM_RECONCILE_INTERVAL_S": "1",
    "HBM_REDIS_TIMEOUT_S": "1",
    "HBM_WORKER_PRESENCE_TTL_S": "3",
    "HBM_HEADER_TIMEOUT_S": "3",
    "HBM_BODY_TIMEOUT_S": "6",
}


def deploy(folder: Path, url: str, **settings: str) -> Deployment:
    """A deployment for tests: the shared one, with ``FAST_FAULTS`` under ``settings``."""
    return shared_deploy(folder, url, **(FAST_FAULTS | settings))


def deployed(
    tmp_path_factory: pytest.TempPathFactory, db: int, **settings: str
) -> Iterator[Deployment]:
    """A deployment on an emptied Redis database ``db``, stopped when the fixture ends."""
    url = redis_url(db)
    clean_redis(url)
    running = deploy(tmp_path_factory.mktemp(f"deployment-{db}"), url, **settings)
    yield running
    running.stop_all()


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from deployed(tmp_path_factory, 15)


@pytest.fixture
def client(deployment: Deployment) -> Iterator[httpx.Client]:
    with deployment.client() as http:
        yield http


def wait_for_status(
    client: httpx.Client,
    location: str,
    accept: Callable[[dict[str, Any]], bool],
    timeout_s: float = 120,
    poll_s: float = 0.1,
) -> dict[str, Any]:
    """Poll a fit until ``accept`` holds for its record; return that record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fit: dict[str, Any] = client.get(location).json()
        if accept(fit):
            return fit
        time.sleep(poll_s)
    raise AssertionError(f"fit {location} never reached the expected state: {fit}")


def wait_for_fit(client: httpx.Client, location: str, timeout_s: float = 300) -> dict[str, Any]:
    """Poll a fit until it reaches a final status; return its last record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fit: dict[str, Any] = client.get(location).json()
        if fit["status"] in ("succeeded", "failed", "cancelled"):
            return fit
        time.sleep(0.3)
    raise AssertionError(f"fit {location} did not finish in {timeout_s} s")


def fit_seed_study(
    client: httpx.Client, records: list[dict[str, Any]], seed: int, **sampler: int
) -> dict[str, Any]:
    """Fit the seed study's partial pooling model, ``score ~ (1 | school)``, with small
    draws (``QUICK``, overridden by ``sampler``); its record once it succeeded."""
    body = {
        "data": records,
        "formula": "score ~ (1 | school)",
        "sampler": QUICK | sampler | {"seed": seed},
    }
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    fit = wait_for_fit(client, response.headers["location"])
    assert fit["status"] == "succeeded", fit
    return fit


@contextmanager
def unfinished_fit(client: httpx.Client, records: list[dict[str, Any]], seed: int) -> Iterator[str]:
    """The location of a seed-study fit long enough to be still queued or running for the
    block, cancelled after it."""
    body = {
        "data": records,
        "formula": "score ~ (1 | school)",
        "sampler": {"draws": 5000, "tune": 5000, "chains": 2, "seed": seed},
    }
    location = str(client.post("/v1/fits", json=body).headers["location"])
    try:
        yield location
        assert client.get(location).json()["status"] in ("queued", "running")
    finally:
        client.delete(location)
