"""A fit that outgrows the memory a fit may use fails clearly (reason out_of_memory), is not
retried, and the worker lives on to take the next fit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Deployment, deployed, wait_for_fit

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # 1 MiB: every fit is over the limit as soon as sampling starts.
    yield from deployed(tmp_path_factory, 11, HBM_MAX_FIT_RSS_MB="1")


def test_a_fit_over_its_memory_limit_fails_clearly_and_the_worker_lives_on(
    tight: Deployment, seed_records: list[dict[str, Any]]
) -> None:
    with tight.client() as client:
        locations = [
            client.post(
                "/v1/fits",
                json={
                    "data": seed_records,
                    "formula": "score ~ (1 | school)",
                    "sampler": {"draws": 200, "tune": 200, "chains": 2, "seed": seed},
                },
            ).headers["location"]
            for seed in (1, 2)
        ]
        for location in locations:
            fit = wait_for_fit(client, location)
            assert fit["status"] == "failed"
            assert fit["error"]["reason"] == "out_of_memory"
            assert "memory" in fit["error"]["message"]
            assert fit["attempts"] == 1
    assert tight.processes["worker-fits"].poll() is None
