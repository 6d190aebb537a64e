"""A full disk under a running deployment (a small tmpfs as its data folder; the test is
skipped where this machine cannot mount one). A submission that cannot be stored gets 507
with Retry-After and leaves nothing behind; a fit whose results cannot be stored fails with
reason ``storage_error``, leaves no partial results, is not the answer to its request (the
same request fits again once there is room), and its worker lives on."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests.conftest import clean_redis, redis_url
from tests.e2e.conftest import QUICK, Deployment, deploy, wait_for_fit

pytestmark = pytest.mark.e2e

DISK_MIB = 16


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Path]]:
    folder = tmp_path_factory.mktemp("small-disk")
    data = folder / "data"
    data.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(data)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:80]})")
    url = redis_url(12)
    clean_redis(url)
    running = deploy(folder, url)
    try:
        yield running, data
    finally:
        for name in list(running.processes):
            running.stop(name)
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(data: Path, leave_kib: int) -> Path:
    """Fill the disk, then free ``leave_kib`` KiB of it."""
    filler = data / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_kib * 1024))
    return filler


def body(records: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    return {"data": records, "formula": "score ~ (1 | school)", "sampler": QUICK | {"seed": seed}}


def test_a_submission_that_cannot_be_stored_gets_507_and_leaves_nothing(
    small_disk: tuple[Deployment, Path], seed_records: list[dict[str, Any]]
) -> None:
    running, data = small_disk
    filler = fill(data, leave_kib=0)
    try:
        with running.client() as client:
            response = client.post("/v1/fits", json=body(seed_records, 1))
            assert response.status_code == 507, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) > 0
            assert client.get("/v1/fits").json() == []
        leftovers = list((data / "fits").iterdir()) if (data / "fits").exists() else []
        assert leftovers == []
    finally:
        filler.unlink()


def test_a_fit_whose_results_cannot_be_stored_fails_clearly_and_fits_again_later(
    small_disk: tuple[Deployment, Path], seed_records: list[dict[str, Any]]
) -> None:
    running, data = small_disk
    filler = fill(data, leave_kib=48)  # room for the request, not for the draws
    with running.client() as client:
        location = client.post("/v1/fits", json=body(seed_records, 2)).headers["location"]
        fit = wait_for_fit(client, location)
        assert (fit["status"], fit["error"]["reason"]) == ("failed", "storage_error"), fit
        assert "disk is full" in fit["error"]["message"]
        assert fit["attempts"] == 1
        folder = data / "fits" / fit["id"]
        assert sorted(p.name for p in folder.iterdir()) == ["spec.json"]  # no partial results
        filler.unlink()
        # the failure is not the request's answer: the same request fits again
        again = client.post("/v1/fits", json=body(seed_records, 2))
        assert again.json()["id"] != fit["id"]
        assert wait_for_fit(client, again.headers["location"])["status"] == "succeeded"
    assert running.processes["worker-fits"].poll() is None
    assert Redis.from_url(running.env["REDIS_URL"]).ping()
