"""The benchmark cases: seeded data (no downloads), the model, and its main parameters.

Every system fits every case with the same sampler settings and the same data: the data
are generated with a fixed numpy seed (the seed study reads ``data/seed_students.csv``), and
each process checks their SHA-256 (:meth:`Case.digest`) against the parent's.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from bench.seed import FAMILY, FORMULA, load_records

DRAWS = 1000
TUNE = 1000
CHAINS = 4
SEED = 1
DATA_SEED = 20261129

Data = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One model on one data set, as Bambi and as rstanarm's ``stan_glmer`` see it.

    ``parameters`` are the main parameters under Bambi's names (every fixed effect, every
    group SD, ``sigma`` where the family has it). ``r_parameters`` maps rstanarm's names to
    those; a ``Sigma[g:t,t]`` entry is a variance, reported as its square root (the SD).
    """

    name: str
    description: str
    make_data: Callable[[], Data]
    formula: str
    family: str
    group: str
    parameters: tuple[str, ...]
    r_formula: str
    r_family: str
    r_parameters: dict[str, str]
    truth: dict[str, float] = field(default_factory=dict)

    def data(self) -> Data:
        """The columns as numpy arrays (generated once per process)."""
        return self.make_data()

    def columns(self) -> dict[str, list[Any]]:
        """The columns as JSON-ready lists (the API accepts columns as well as rows)."""
        return {name: values.tolist() for name, values in self.data().items()}

    def frame(self) -> Any:
        """The data as a pandas DataFrame (pandas is imported only where it is needed)."""
        import pandas as pd

        return pd.DataFrame(self.data())

    def write_csv(self, path: Path) -> None:
        """Write the data as CSV with a header (floats in round-trip precision)."""
        columns = self.columns()
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(zip(*columns.values(), strict=True))

    def digest(self) -> str:
        """SHA-256 of the data: equal in every process that fits this case."""
        return hashlib.sha256(json.dumps(self.columns()).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The case as recorded in the results."""
        data = self.data()
        return {
            "description": self.description,
            "formula": self.formula,
            "family": self.family,
            "rows": len(data[self.group]),
            "groups": len(np.unique(data[self.group])),
            "parameters": list(self.parameters),
            "truth": self.truth,
            "r_formula": self.r_formula,
            "r_family": self.r_family,
            "r_parameters": self.r_parameters,
            "data_sha256": self.digest(),
        }


@cache
def _seed_study() -> Data:
    records = load_records()
    return {
        "school": np.array([r["school"] for r in records]),
        "score": np.array([r["score"] for r in records]),
    }


def _design(groups: int, per_group: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """A seeded generator, the group index of every row and a standard normal ``x``."""
    rng = np.random.default_rng(DATA_SEED)
    g = np.repeat(np.arange(groups), per_group)
    return rng, g, rng.normal(size=g.size)


@cache
def _slopes() -> Data:
    rng, g, x = _design(300, 30)
    sd = np.array([0.7, 0.4])
    cov = np.outer(sd, sd) * np.array([[1.0, 0.3], [0.3, 1.0]])
    u = rng.multivariate_normal(np.zeros(2), cov, size=300)
    y = 1.0 + u[g, 0] + (0.5 + u[g, 1]) * x + rng.normal(scale=1.0, size=g.size)
    return {"g": g, "x": x, "y": y}


@cache
def _intercepts() -> Data:
    rng, g, x = _design(1000, 100)
    u = rng.normal(scale=0.7, size=1000)
    y = 1.0 + u[g] + 0.5 * x + rng.normal(scale=1.0, size=g.size)
    return {"g": g, "x": x, "y": y}


@cache
def _logistic() -> Data:
    rng, g, x = _design(500, 20)
    u = rng.normal(scale=0.8, size=500)
    p = 1 / (1 + np.exp(-(-0.5 + u[g] + 1.0 * x)))
    return {"g": g, "x": x, "y": (rng.random(g.size) < p).astype(np.int64)}


_FIXED = {"(Intercept)": "Intercept", "x": "x"}

CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case(
            name="seed",
            description="the seed study: 484 students in 20 schools (data/seed_students.csv)",
            make_data=_seed_study,
            formula=FORMULA,
            family=FAMILY,
            group="school",
            parameters=("Intercept", "1|school_sigma", "sigma"),
            r_formula=FORMULA,
            r_family="gaussian()",
            r_parameters={
                "(Intercept)": "Intercept",
                "Sigma[school:(Intercept),(Intercept)]": "1|school_sigma",
                "sigma": "sigma",
            },
        ),
        Case(
            name="slopes-300x30",
            description="300 groups x 30 rows, correlated intercepts and slopes",
            make_data=_slopes,
            formula="y ~ x + (1 + x | g)",
            family="gaussian",
            group="g",
            parameters=("Intercept", "x", "1|g_sigma", "x|g_sigma", "sigma"),
            r_formula="y ~ x + (1 + x | g)",
            r_family="gaussian()",
            r_parameters={
                **_FIXED,
                "Sigma[g:(Intercept),(Intercept)]": "1|g_sigma",
                "Sigma[g:x,x]": "x|g_sigma",
                "sigma": "sigma",
            },
            truth={"Intercept": 1.0, "x": 0.5, "1|g_sigma": 0.7, "x|g_sigma": 0.4, "sigma": 1.0},
        ),
        Case(
            name="intercepts-1000x100",
            description="1,000 groups x 100 rows, varying intercepts",
            make_data=_intercepts,
            formula="y ~ x + (1 | g)",
            family="gaussian",
            group="g",
            parameters=("Intercept", "x", "1|g_sigma", "sigma"),
            r_formula="y ~ x + (1 | g)",
            r_family="gaussian()",
            r_parameters={
                **_FIXED,
                "Sigma[g:(Intercept),(Intercept)]": "1|g_sigma",
                "sigma": "sigma",
            },
            truth={"Intercept": 1.0, "x": 0.5, "1|g_sigma": 0.7, "sigma": 1.0},
        ),
        Case(
            name="logistic-500",
            description="500 groups x 20 rows, bernoulli (logit), varying intercepts",
            make_data=_logistic,
            formula="y ~ x + (1 | g)",
            family="bernoulli",
            group="g",
            parameters=("Intercept", "x", "1|g_sigma"),
            r_formula="y ~ x + (1 | g)",
            r_family='binomial(link = "logit")',
            r_parameters={**_FIXED, "Sigma[g:(Intercept),(Intercept)]": "1|g_sigma"},
            truth={"Intercept": -0.5, "x": 1.0, "1|g_sigma": 0.8},
        ),
    )
}
