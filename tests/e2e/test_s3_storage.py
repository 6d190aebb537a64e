"""Many hosts, no shared filesystem: with ``HBM_STORAGE_URL=s3://...`` every fit file lives
in an S3 bucket (a real local S3 endpoint: moto's server mode). The API, two fit workers and
an interactive worker each get their own empty data folder, as on separate hosts: fits,
results, predictions, plots, exports, deletes and retention all work through the bucket, and
no file ever appears in any local folder."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import s3fs

from tests.conftest import clean_redis, redis_url
from tests.e2e.conftest import FAST_FAULTS, QUICK, wait_for_fit
from tests.support.deployment import Deployment, free_port
from tests.support.s3 import S3Endpoint, s3_server

pytestmark = pytest.mark.e2e

#: Finished fits are kept this long (their records expire, then the reconciler removes
#: their files from the bucket).
RETENTION_S = 45
HOSTS = ("api", "worker-fits", "worker-fits-2", "worker-interactive")


def host_folder(root: Path, host: str) -> Path:
    return root / host / "data"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Iterator[Deployment]:
    """The API and three workers on one S3 bucket, each with its own local data folder."""
    root = tmp_path_factory.mktemp("hosts")
    url = redis_url(11)
    clean_redis(url)
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
        "HBM_RETENTION_S": str(RETENTION_S),
        **FAST_FAULTS,
        **s3.settings("service"),
    }
    env.pop("HBM_REDIS_URL", None)
    env.pop("HBM_BROKER_URL", None)
    running = Deployment(f"http://127.0.0.1:{port}", env, root)
    try:
        for name, role in (
            ("worker-fits", "fits"),
            ("worker-fits-2", "fits"),
            ("worker-interactive", "interactive"),
        ):
            running.start_worker(name, role, env={"HBM_DATA_DIR": str(host_folder(root, name))})
        running.start("api", "service", env={"HBM_DATA_DIR": str(host_folder(root, "api"))})
        running.wait_until("/v1/readyz")
        yield running
    finally:
        running.stop_all()


def bucket(s3: S3Endpoint) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**s3.options(), use_listings_cache=False)


def stored_files(s3: S3Endpoint, fit_id: str) -> list[str]:
    """The objects of one fit in the bucket."""
    fs = bucket(s3)
    prefix = f"{s3.bucket}/service/fits/{fit_id}"
    return sorted(name.rsplit("/", 1)[-1] for name in fs.find(prefix))


def local_files(hosts: Deployment) -> list[Path]:
    """Every file under any host's own data folder."""
    return [
        path
        for host in HOSTS
        if host_folder(hosts.logs, host).exists()
        for path in host_folder(hosts.logs, host).rglob("*")
        if path.is_file()
    ]


def submit(client: httpx.Client, records: list[dict[str, Any]], seed: int) -> str:
    body = {"data": records, "formula": "score ~ (1 | school)", "sampler": QUICK | {"seed": seed}}
    response = client.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    return str(response.headers["location"])


def test_fits_results_and_deletes_go_through_the_bucket_alone(
    hosts: Deployment, s3: S3Endpoint, seed_records: list[dict[str, Any]]
) -> None:
    with hosts.client() as client:
        ready = client.get("/v1/readyz").json()
        assert ready["checks"]["storage"] == "ok" and ready["checks"]["fit_workers"] == "2"
        # two fits at once: each fit worker may take one
        locations = [submit(client, seed_records, seed) for seed in (1, 2)]
        fits = [wait_for_fit(client, location) for location in locations]
        assert [f["status"] for f in fits] == ["succeeded", "succeeded"], fits
        kept, deleted = (f["id"] for f in fits)
        base = f"/v1/fits/{kept}"

        summary = client.get(f"{base}/summary").json()
        assert {p["name"] for p in summary["parameters"]} >= {"Intercept", "sigma"}
        assert len(client.get(f"{base}/groups/school").json()["levels"]) == 20
        assert client.get(f"{base}/diagnostics").json()["verdict"] in ("pass", "warn")
        predictions = client.post(f"{base}/predictions", json={"data": {"school": [1, 999]}}).json()
        assert [row["groups"]["school"] for row in predictions["rows"]] == ["seen", "new"]
        assert client.get(f"{base}/loo").json()["n_obs"] == 484
        plot = client.get(f"{base}/plots/forest")
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
        draws = client.get(f"{base}/draws", params={"format": "csv"})
        assert draws.status_code == 200 and draws.text.startswith("chain,draw")

        # everything the fit made is in the bucket, nothing on any host's disk
        files = stored_files(s3, kept)
        for name in ("spec.json", "posterior.nc", "summary.json", "results.json", "loo.json"):
            assert name in files, files
        assert any(name.startswith("plot-") for name in files)
        assert any(name.startswith("draws-") for name in files)
        assert local_files(hosts) == []

        assert stored_files(s3, deleted)
        assert client.delete(f"/v1/fits/{deleted}").status_code == 204
        assert stored_files(s3, deleted) == []
        assert client.get(f"/v1/fits/{deleted}").status_code == 404


def test_a_finished_fit_leaves_the_bucket_after_its_retention(
    hosts: Deployment, s3: S3Endpoint, seed_records: list[dict[str, Any]]
) -> None:
    with hosts.client() as client:
        fit = wait_for_fit(client, submit(client, seed_records, seed=3))
        assert fit["status"] == "succeeded"
        assert "posterior.nc" in stored_files(s3, fit["id"])
        deadline = time.monotonic() + RETENTION_S + 60
        while time.monotonic() < deadline and stored_files(s3, fit["id"]):
            time.sleep(1)
        assert stored_files(s3, fit["id"]) == []
        assert client.get(f"/v1/fits/{fit['id']}").status_code == 404
        assert local_files(hosts) == []
