"""The API keeps recently used fits' requests: a second prediction does not read the
stored request again, a revision names its own entry, and the memory held stays within its
bound (the least recently used request goes first; one too large is never kept)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.specs import SpecCache
from service.core.artifacts import Artifacts
from service.core.jobs import new_fit_id
from service.core.schemas import FitSpec
from tests.unit.test_job_store import spec


class CountingArtifacts(Artifacts):
    """Artifacts that count reads of requests."""

    reads = 0

    def read_spec(self, fit_id: str) -> FitSpec:
        self.reads += 1
        return super().read_spec(fit_id)


@pytest.fixture
def artifacts(tmp_path: Path) -> CountingArtifacts:
    return CountingArtifacts(tmp_path)


def stored(artifacts: Artifacts) -> str:
    fit_id = new_fit_id()
    artifacts.write_spec(fit_id, spec())
    return fit_id


def cells() -> int:
    return sum(len(values) for values in spec().columns.values())


def test_a_request_is_read_once_then_served_from_memory(artifacts: CountingArtifacts) -> None:
    cache, fit_id = SpecCache(artifacts), stored(artifacts)
    assert cache.get(fit_id, "r1") == spec()
    assert cache.get(fit_id, "r1") == spec()
    assert artifacts.reads == 1
    cache.get(fit_id, "r2")  # another revision is another entry: read again
    assert artifacts.reads == 2


def test_the_least_recently_used_request_goes_first(artifacts: CountingArtifacts) -> None:
    cache = SpecCache(artifacts, max_cells=2 * cells())
    first, second, third = (stored(artifacts) for _ in range(3))
    cache.get(first, "r")
    cache.get(second, "r")
    cache.get(first, "r")  # first is now the most recently used
    cache.get(third, "r")  # over the bound: second goes
    assert len(cache) == 2
    reads = artifacts.reads
    cache.get(first, "r")
    cache.get(third, "r")
    assert artifacts.reads == reads
    cache.get(second, "r")
    assert artifacts.reads == reads + 1


def test_a_request_larger_than_the_bound_is_never_kept(artifacts: CountingArtifacts) -> None:
    cache, fit_id = SpecCache(artifacts, max_cells=cells() - 1), stored(artifacts)
    cache.get(fit_id, "r")
    cache.get(fit_id, "r")
    assert len(cache) == 0 and artifacts.reads == 2
