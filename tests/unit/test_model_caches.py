"""Worker caches drop what they evict, even after the worker froze its long-lived objects.

After each fit a fits worker freezes what survived (``gc.freeze``, see ``tasks.run_fit``)
so that later collections skip it. A cache that evicts an entry must thaw them again, or
reference cycles in the evicted model would never be collected.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.core.artifacts import Artifacts
from worker.modeling.cache import FittedModel, FittedModelCache


class Cyclic:
    """An object in a reference cycle, as Bambi models and PyTensor graphs are."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def frozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def fitted(model: Any) -> FittedModel:
    return FittedModel(spec=None, model=model, posterior=None, sample_stats=None)  # type: ignore[arg-type]


def test_an_evicted_fitted_model_is_collected_after_a_freeze(tmp_path: Path, frozen: None) -> None:
    cache = FittedModelCache(Artifacts(tmp_path), size=1)
    model = Cyclic()
    alive = weakref.ref(model)
    cache.put("first", fitted(model))
    del model
    gc.collect()
    gc.freeze()
    assert gc.get_freeze_count() > 0
    cache.put("second", fitted(Cyclic()))  # evicts "first"
    gc.collect()
    assert alive() is None
