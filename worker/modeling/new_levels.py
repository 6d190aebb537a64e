"""Draws of new group levels: each new level of each group-level term gets its own draws
from the fitted population, ``b_new ~ Normal(mu, sigma)`` with ``(mu, sigma)`` taken draw
by draw from the posterior (brms' ``sample_new_levels = "gaussian"``).

A level's draws are a function of (request seed, factor, term, label) alone, through a
generator seeded by a stable digest of them: every chunk of a prediction draws them alike,
and so does the same request sent again, whatever other rows it holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import xarray as xr
from bambi.utils import get_aliased_name

from service.core.errors import InvalidRequest
from worker.modeling.summaries import SAMPLE_DIMS


@dataclass
class NewLevels:
    """Draws of new group levels, each level its own and the same wherever it is named.

    A level's draws are a function of (request seed, factor, term, label) alone: every
    chunk of a request draws them alike, and so does the same request sent again.
    """

    posterior: xr.Dataset
    seed: int
    _population: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def for_rows(
        self, term: Any, factor: str, labels: pd.DataFrame, rows: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draws (chain, draw, level, k) of the distinct new levels of ``rows`` and, for each
        row, the position of its level among them."""
        if not rows.size:
            return np.empty((0, 0, 0, k)), np.empty(0, dtype=int)
        columns = sorted(term.term.factor.var_names)
        keys = [
            tuple(_plain(v) for v in key)
            for key in labels[columns].iloc[rows].itertuples(index=False)
        ]
        distinct = list(dict.fromkeys(keys))
        position = {key: i for i, key in enumerate(distinct)}
        mu, sigma = self._hyperparameters(term, k)
        fresh = np.empty((*mu.shape[:2], len(distinct), k))
        for i, key in enumerate(distinct):
            rng = np.random.default_rng(level_seed(self.seed, factor, get_aliased_name(term), key))
            fresh[:, :, i] = mu + sigma * rng.standard_normal(mu.shape)
        return fresh, np.array([position[key] for key in keys])

    def _hyperparameters(self, term: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The population's ``mu`` and ``sigma``, (chain, draw, k), for the term."""
        name = get_aliased_name(term)
        if name not in self._population:
            prior = term.prior
            if prior.name != "Normal":
                raise InvalidRequest.one(
                    "data", f"new levels cannot be predicted for '{name}' with a {prior.name} prior"
                )
            self._population[name] = (
                self._hyperparameter(name, "mu", prior.args["mu"], k),
                self._hyperparameter(name, "sigma", prior.args["sigma"], k),
            )
        return self._population[name]

    def _hyperparameter(self, name: str, arg: str, value: Any, k: int) -> np.ndarray:
        """Draws (chain, draw, k) of a hyperparameter, or its fixed value broadcast."""
        shape = (self.posterior.sizes["chain"], self.posterior.sizes["draw"])
        if isinstance(value, bmb.Prior):
            array = self.posterior[f"{name}_{arg}"].transpose(*SAMPLE_DIMS, ...).values
        else:
            array = np.broadcast_to(np.asarray(value, dtype=float), shape)
        return np.broadcast_to(array.reshape(*shape, -1), (*shape, k))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def level_seed(seed: int, factor: str, term: str, label: tuple[Any, ...]) -> int:
    """A generator seed for one new level, from a stable digest (never Python's ``hash``,
    which changes from process to process)."""
    text = json.dumps([seed, factor, term, list(label)], default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")
