"""``GET /v1/readyz`` answers 200 only when every dependency answers: Redis, the data folder,
a fit worker and an interactive worker; otherwise 503 naming each one that is missing.
(What ``make run`` and the deployments wait for; Redis is real, workers are announced.)"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.unit.test_api import app_client


def announce(client: TestClient, *queues: str) -> None:
    store = client.app.state.services.store  # type: ignore[attr-defined]
    for i, queue in enumerate(queues):
        store.announce_worker(queue, f"host:{i}", ttl_s=30)


def test_ready_needs_both_kinds_of_worker_and_names_the_one_missing(tmp_path: Path) -> None:
    with app_client(tmp_path) as client:
        announce(client, "hbm.fits")
        only_fits = client.get("/v1/readyz")
        announce(client, "hbm.fits", "hbm.interactive")
        ready = client.get("/v1/readyz")

    assert only_fits.status_code == 503
    assert only_fits.json()["detail"] == "not ready: no interactive worker is alive"
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_a_data_folder_that_cannot_be_written_is_named_even_with_workers_alive(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("x")
    with app_client(blocked) as client:
        announce(client, "hbm.fits", "hbm.interactive")
        answer = client.get("/v1/readyz")

    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert answer.json()["detail"] == "not ready: the storage is not writable"
