"""A small LRU cache of fitted models (rebuilt Bambi model + posterior) per worker process.

Entries are keyed by the fit's id and its revision (when its record was created), so that an
entry can never answer for another fit, even one recorded under a reused id."""

from __future__ import annotations

import gc
from collections import OrderedDict
from dataclasses import dataclass

import bambi as bmb
import xarray as xr

from service.core.artifacts import Artifacts
from service.core.schemas import FitSpec
from worker.modeling.building import build_model
from worker.modeling.storage import load_posterior


@dataclass
class FittedModel:
    """What predictions and summaries need: the model and its draws."""

    spec: FitSpec
    model: bmb.Model
    posterior: xr.Dataset
    sample_stats: xr.Dataset


class FittedModelCache:
    """Keeps the ``size`` most recently used fitted models in memory."""

    def __init__(self, artifacts: Artifacts, size: int) -> None:
        self.artifacts = artifacts
        self.size = size
        self._items: OrderedDict[str, FittedModel] = OrderedDict()

    def get(self, fit_id: str, revision: str = "") -> FittedModel:
        """The fitted model, loaded from its artifacts on a miss."""
        key = f"{fit_id}@{revision}"
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        spec = self.artifacts.read_spec(fit_id)
        posterior, stats = load_posterior(self.artifacts, fit_id)
        fitted = FittedModel(spec, build_model(spec), posterior, stats)
        self.put(key, fitted)
        return fitted

    def put(self, key: str, fitted: FittedModel) -> None:
        """Remember a fitted model, evicting the least recently used beyond ``size``."""
        self._items[key] = fitted
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
            gc.unfreeze()  # the dropped model may sit in a frozen cycle (see tasks.run_fit)
