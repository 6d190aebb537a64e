"""Draws of new group levels: each new level of each group-level term gets its own draws
from the fitted population, ``b_new ~ Normal(mu, sigma)`` with ``(mu, sigma)`` taken draw
by draw from the posterior (brms' ``sample_new_levels = "gaussian"``).

A level's draws are a function of (request seed, factor, term, label) alone, through a
generator seeded by a stable digest of them: every chunk of a prediction draws them alike,
and so does the same request sent again, whatever other rows it holds.

Terms estimated jointly (``(1 + x | g)``, see ``correlated``) draw a new level's whole
vector from the fitted MvNormal(0, Sigma), draw by draw: with ``z_t`` the standard normals
each term ``t`` of the block draws as above and ``L`` the Cholesky factor of the draw's
correlation matrix, term ``i`` takes ``s_i sum_{m <= i} L_im z_m``, which is
``diag(s) L z ~ MvNormal(0, diag(s) R diag(s))``. The block's first term draws exactly
what it would alone; the others carry the correlation.
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
        block = correlated_block(self.posterior, get_aliased_name(term)) if k == 1 else None
        fresh = np.empty((*mu.shape[:2], len(distinct), k))
        for i, key in enumerate(distinct):
            if block is not None:
                fresh[:, :, i, 0] = block.draw(self.seed, factor, key)
                continue
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


@dataclass
class CorrelatedBlock:
    """A term's block of jointly estimated terms, with the posterior's SDs and the
    Cholesky factor of its correlation matrix, draw by draw."""

    terms: list[str]  # the block's terms in the order of its Cholesky factor
    position: int  # the term's place among them
    sds: np.ndarray  # (chain, draw, k)
    chol: np.ndarray  # (chain, draw, k, k)

    def draw(self, seed: int, factor: str, key: tuple[Any, ...]) -> np.ndarray:
        """The term's draws (chain, draw) for the new level ``key`` (module docstring)."""
        i = self.position
        total = np.zeros(self.sds.shape[:2])
        for m, name in enumerate(self.terms[: i + 1]):
            rng = np.random.default_rng(level_seed(seed, factor, name, key))
            z = rng.standard_normal((*self.sds.shape[:2], 1))[..., 0]
            total += self.chol[..., i, m] * z
        return np.asarray(self.sds[..., i] * total)


def correlated_block(posterior: xr.Dataset, name: str) -> CorrelatedBlock | None:
    """The block ``name`` was estimated in, read from the posterior's correlations
    (``a:b_corr`` for terms ``a`` before ``b``); None for a term estimated alone."""
    if name not in posterior:
        return None
    factor_dims = [d for d in posterior[name].dims if str(d).endswith("__factor_dim")]
    partners = [
        str(other)
        for other in posterior.data_vars
        if other != name and factor_dims and posterior[other].dims == posterior[name].dims
    ]
    pairs = {
        (a, b): f"{a}:{b}_corr"
        for a in [name, *partners]
        for b in [name, *partners]
        if a != b and f"{a}:{b}_corr" in posterior
    }
    members = sorted({t for pair in pairs for t in pair})
    if name not in members or any(f"{t}_sigma" not in posterior for t in members):
        return None
    # The first term of the block names every pair it is in first, and so on.
    members.sort(key=lambda t: -sum(1 for a, _ in pairs if a == t))
    k = len(members)
    shape = (posterior.sizes["chain"], posterior.sizes["draw"])
    corr = np.broadcast_to(np.eye(k), (*shape, k, k)).copy()
    for (a, b), var in pairs.items():
        i, j = members.index(a), members.index(b)
        values = posterior[var].transpose(*SAMPLE_DIMS).values
        corr[..., i, j] = corr[..., j, i] = values
    sds = np.stack(
        [posterior[f"{t}_sigma"].transpose(*SAMPLE_DIMS).values for t in members], axis=-1
    )
    return CorrelatedBlock(members, members.index(name), sds, np.linalg.cholesky(corr))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def level_seed(seed: int, factor: str, term: str, label: tuple[Any, ...]) -> int:
    """A generator seed for one new level, from a stable digest (never Python's ``hash``,
    which changes from process to process)."""
    text = json.dumps([seed, factor, term, list(label)], default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")
