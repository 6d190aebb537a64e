"""A real local S3 endpoint for tests: moto's server mode (``moto[server]``), started as a
process on a free port, with one bucket. Nothing leaves the machine."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from service.launcher import free_port

REGION = "us-east-1"
CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3 server and a bucket on it."""

    endpoint_url: str
    bucket: str

    def url(self, prefix: str) -> str:
        """``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{prefix}"

    def settings(self, prefix: str) -> dict[str, str]:
        """The service's settings (``HBM_*``) for storage under ``prefix``."""
        return {
            "HBM_STORAGE_URL": self.url(prefix),
            "HBM_S3_ENDPOINT_URL": self.endpoint_url,
            "HBM_S3_ACCESS_KEY_ID": CREDENTIALS["key"],
            "HBM_S3_SECRET_ACCESS_KEY": CREDENTIALS["secret"],
            "HBM_S3_REGION": REGION,
        }

    def options(self) -> dict[str, object]:
        """s3fs's options for this endpoint."""
        return {
            **CREDENTIALS,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }


@contextmanager
def s3_server(bucket: str = "hbm-test") -> Iterator[S3Endpoint]:
    """Start moto's S3 server, create ``bucket``, and stop the server afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        httpx.put(f"{endpoint}/{bucket}", timeout=10).raise_for_status()
        yield S3Endpoint(endpoint, bucket)
    finally:
        process.terminate()
        process.wait(timeout=20)
