"""Reference posteriors computed with Stan by others (copied from the shared folder), and
how to compare a fit's summaries with them through the HTTP API.

Each reference parameter carries a Bambi expression: ``Intercept``, ``1|school_sigma``
(summary parameters), ``Intercept + 1|school[s1]`` (a level's total, the groups resource's
``coef``), ``1|student[0]`` (a level's ``ranef``) or ``-(1|question[84])`` (its negation).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FOLDER = Path(__file__).resolve().parents[1] / "data" / "reference"

_LEVEL = re.compile(r"^(?P<neg>-\()?(?P<term>[^\[]+)\[(?P<level>[^\]]+)\]\)?$")


#: Problems computed for this project on another problem's data.
DATA_OF = {
    "radon_mn_correlated": "radon_mn_variable_intercept_slope",
    "rstanarm_radon_gaussian": "radon_mn_variable_intercept_slope",
    "rstanarm_radon_slopes": "radon_mn_variable_intercept_slope",
    "rstanarm_cbpp_binomial": "cbpp",
}


def load(name: str) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The problem's data columns and its reference parameters."""
    data_file = FOLDER / f"{DATA_OF.get(name, name)}.data.json"
    data = json.loads(data_file.read_text())["columns"]
    reference = json.loads((FOLDER / f"{name}.reference.json").read_text())["params"]
    return data, reference


@dataclass
class Comparison:
    """One reference parameter next to the fit."""

    name: str
    expression: str
    z: float  # |mean_fit - mean_ref| / sd_ref
    ratio: float  # sd_fit / sd_ref
    mc_z: float  # |mean_fit - mean_ref| / (combined Monte Carlo SE), inf when not known

    def agrees(self, tolerance: float = 0.1) -> bool:
        """Within ``tolerance`` reference SDs, or within 3 Monte Carlo standard errors (a
        slowly mixing mean, such as a crossed model's intercept, is only known that well)."""
        return self.z <= tolerance or self.mc_z <= 3


def fitted_estimates(client: httpx.Client, location: str) -> dict[str, dict[str, float]]:
    """Every estimate the API serves, keyed by its Bambi expression."""
    estimates: dict[str, dict[str, float]] = {}
    for p in client.get(f"{location}/summary").json()["parameters"]:
        key = p["name"] if p["level"] is None else f"{p['name']}[{p['level']}]"
        estimates[key] = p
    for factor in client.get(f"{location}/groups").json()["factors"]:
        groups = client.get(f"{location}/groups/{factor['factor']}").json()
        for level in groups["levels"]:
            for effect in level["effects"]:
                term = effect["term"]
                expr = term.split("|")[0]
                fixed = "Intercept" if expr == "1" else expr
                estimates[f"{term}[{level['level']}]"] = effect["ranef"]
                estimates[f"{fixed} + {term}[{level['level']}]"] = effect["coef"]
    return estimates


def compare(estimates: dict[str, dict[str, float]], reference: dict[str, Any]) -> list[Comparison]:
    """Every reference parameter compared with the fit's estimate of its expression."""
    rows = []
    for name, ref in reference.items():
        expression = ref["bambi"]
        sign = 1.0
        match = _LEVEL.match(expression)
        if match and match["neg"]:
            sign = -1.0
            expression = f"{match['term']}[{match['level']}]"
        fit = estimates[expression]
        difference = abs(sign * fit["mean"] - ref["mean"])
        mcse = (fit.get("mcse_mean", math.inf) ** 2 + ref.get("mcse_mean", 0.0) ** 2) ** 0.5
        rows.append(
            Comparison(
                name=name,
                expression=ref["bambi"],
                z=difference / ref["sd"],
                ratio=fit["sd"] / ref["sd"],
                mc_z=difference / mcse,
            )
        )
    return rows


def assert_reproduced(
    name: str, rows: list[Comparison], reference: dict[str, Any], sd_tolerance: float = 0.15
) -> None:
    """Every reference parameter compared, every mean agreeing (``Comparison.agrees``) and
    every sd within ``sd_tolerance``; prints the worst figures."""
    assert len(rows) == len(reference)
    worst_z = max(rows, key=lambda r: r.z)
    worst_ratio = max(rows, key=lambda r: abs(r.ratio - 1))
    print(
        f"{name}: max z {worst_z.z:.3f} ({worst_z.name}), sd ratios "
        f"{min(r.ratio for r in rows):.3f}-{max(r.ratio for r in rows):.3f}"
    )
    assert all(row.agrees() for row in rows), [row for row in rows if not row.agrees()]
    assert abs(worst_ratio.ratio - 1) <= sd_tolerance, worst_ratio
