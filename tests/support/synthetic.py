"""Seeded synthetic grouped data for every family, with known parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

N_GROUPS = 8
PER_GROUP = 25


def grouped(family: str, seed: int = 11) -> dict[str, list[Any]]:
    """Columns ``g`` (group label), ``x`` (predictor), ``y`` (response); binomial adds ``n``.

    The linear predictor is ``0.5 + 0.8 x + b_g`` with ``b_g ~ Normal(0, 0.5)``.
    """
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(N_GROUPS), PER_GROUP)
    x = rng.normal(size=g.size)
    eta = 0.5 + 0.8 * x + rng.normal(0, 0.5, N_GROUPS)[g]
    columns: dict[str, list[Any]] = {"g": [f"g{i}" for i in g], "x": x.round(4).tolist()}
    if family == "gaussian":
        y = eta + rng.normal(0, 1, g.size)
    elif family == "t":
        y = eta + rng.standard_t(5, g.size)
    elif family == "bernoulli":
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    elif family == "binomial":
        n = rng.integers(5, 15, g.size)
        y = rng.binomial(n, 1 / (1 + np.exp(-eta)))
        columns["n"] = n.tolist()
    elif family == "poisson":
        y = rng.poisson(np.exp(eta))
    elif family == "negativebinomial":
        mu = np.exp(eta)
        y = rng.negative_binomial(5, 5 / (5 + mu))
    elif family == "gamma":
        mu = np.exp(eta)
        y = rng.gamma(4, mu / 4)
    elif family == "beta":
        mu = 1 / (1 + np.exp(-eta))
        y = np.clip(rng.beta(mu * 20, (1 - mu) * 20), 1e-4, 1 - 1e-4)
    elif family == "cumulative":
        latent = eta + rng.logistic(size=g.size)
        y = np.digitize(latent, [-0.5, 0.7, 1.8])
    else:
        raise ValueError(family)
    columns["y"] = y.round(6).tolist() if y.dtype.kind == "f" else y.astype(int).tolist()
    return columns


FORMULAS = {
    "binomial": "p(y, n) ~ x + (1 | g)",
}
LINKS = {"gamma": "log", "negativebinomial": "log", "poisson": "log"}


def formula_for(family: str) -> str:
    """The test formula of a family."""
    return FORMULAS.get(family, "y ~ x + (1 | g)")


def features(seed: int = 5, n: int = 240) -> dict[str, list[Any]]:
    """Data for formula features: predictors x, z, w (> 0), c (text), k (integer codes),
    crossed factors g and h, and b nested within a (b's labels repeat across a)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 6, n)
    h = rng.integers(0, 5, n)
    a = rng.integers(0, 4, n)
    b = rng.integers(0, 3, n)
    x = rng.normal(size=n)
    z = rng.normal(size=n)
    w = rng.uniform(0.5, 3.0, n)
    c = rng.choice(["red", "green", "blue"], n)
    k = rng.integers(1, 4, n)
    y = (
        1.0
        + 0.7 * x
        - 0.4 * z
        + 0.3 * x * z
        + 0.5 * np.log(w)
        + (c == "red") * 0.6
        + (0.3 + 0.2 * rng.normal(size=6))[g] * x
        + rng.normal(0, 0.6, 6)[g]
        + rng.normal(0, 0.4, 5)[h]
        + rng.normal(0, 0.5, 4)[a]
        + rng.normal(0, 0.3, 12)[a * 3 + b]
        + rng.normal(0, 0.5, n)
    )
    return {
        "y": y.round(5).tolist(),
        "x": x.round(5).tolist(),
        "z": z.round(5).tolist(),
        "w": w.round(5).tolist(),
        "c": c.tolist(),
        "k": k.tolist(),
        "g": [f"g{i}" for i in g],
        "h": [f"h{i}" for i in h],
        "a": [f"a{i}" for i in a],
        "b": [f"b{i}" for i in b],
    }
