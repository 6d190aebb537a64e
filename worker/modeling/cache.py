"""A small LRU cache of fitted models (rebuilt Bambi model + posterior) per worker process."""

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

    def get(self, fit_id: str) -> FittedModel:
        """The fitted model, loaded from its artifacts on a miss."""
        if fit_id in self._items:
            self._items.move_to_end(fit_id)
            return self._items[fit_id]
        spec = self.artifacts.read_spec(fit_id)
        posterior, stats = load_posterior(self.artifacts, fit_id)
        fitted = FittedModel(spec, build_model(spec), posterior, stats)
        self.put(fit_id, fitted)
        return fitted

    def put(self, fit_id: str, fitted: FittedModel) -> None:
        """Remember a fitted model, evicting the least recently used beyond ``size``."""
        self._items[fit_id] = fitted
        self._items.move_to_end(fit_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
            gc.unfreeze()  # the dropped model may sit in a frozen cycle (see tasks.run_fit)
