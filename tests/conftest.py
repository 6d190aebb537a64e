"""Fixtures shared by every test: the seed study's data and a real Redis."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
SEED_CSV = ROOT / "data" / "seed_students.csv"


def redis_url(db: int) -> str:
    """A Redis database for tests: TEST_REDIS_URL's server (default 127.0.0.1:6379)."""
    base = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
    return f"{base}/{db}"


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
