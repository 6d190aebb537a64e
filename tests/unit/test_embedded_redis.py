"""``make test`` needs nothing but Python: when no Redis answers at TEST_REDIS_URL, the test
session starts an embedded one, uses it, and stops it."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from tests.conftest import ROOT


def redis_servers() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"}


def test_a_session_without_redis_starts_its_own_and_stops_it() -> None:
    before = redis_servers()
    env = dict(os.environ, TEST_REDIS_URL="redis://127.0.0.1:1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/unit/test_job_store.py", "-q", "-s",
         "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert "the tests use an embedded one" in result.stdout
    assert redis_servers() <= before  # the embedded one is gone
