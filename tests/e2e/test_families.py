"""Every family fits end to end over HTTP, reports its parameters, and predicts expected
values and new responses for seen and new groups."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import QUICK, wait_for_fit
from tests.support.synthetic import LINKS, formula_for, grouped

pytestmark = pytest.mark.e2e

AUXILIARY = {
    "gaussian": {"sigma"},
    "t": {"sigma", "nu"},
    "bernoulli": set(),
    "binomial": set(),
    "poisson": set(),
    "negativebinomial": {"alpha"},
    "gamma": {"alpha"},
    "beta": {"kappa"},
    "cumulative": {"threshold"},
}


def new_rows(family: str) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {"g": ["g0", "g1", "new-1", "new-2"], "x": [0.2] * 4}
    if family == "binomial":
        rows["n"] = [10] * 4
    return rows


@pytest.mark.parametrize("family", sorted(AUXILIARY))
def test_family_fits_and_predicts(client: httpx.Client, family: str) -> None:
    response = client.post(
        "/v1/fits",
        json={
            "data": grouped(family),
            "formula": formula_for(family),
            "family": family,
            "link": LINKS.get(family),
            "sampler": {**QUICK, "seed": 3},
        },
    )
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    fit = wait_for_fit(client, location)
    assert fit["status"] == "succeeded", fit["error"]

    summary = client.get(f"{location}/summary").json()["parameters"]
    names = {p["name"] for p in summary}
    assert {"x", "1|g_sigma"} | AUXILIARY[family] <= names
    slope = next(p for p in summary if p["name"] == "x")
    assert slope["lower"] < 0.8 < slope["upper"] or abs(slope["mean"] - 0.8) < 0.5

    for kind in ("mean", "response"):
        answer = client.post(
            f"{location}/predictions", json={"data": new_rows(family), "kind": kind, "seed": 1}
        )
        assert answer.status_code == 200, answer.text
        rows = answer.json()["rows"]
        assert [r["groups"]["g"] for r in rows] == ["seen", "seen", "new", "new"]
        assert rows[2]["mean"] != rows[3]["mean"]
        for row in rows:
            assert row["lower"] <= row["mean"] <= row["upper"]
        if family in ("bernoulli", "binomial", "beta") and kind == "mean":
            assert all(0 < r["mean"] < 1 for r in rows)
        if family in ("poisson", "negativebinomial", "gamma"):
            assert all(r["mean"] > 0 for r in rows)

    priors = client.get(f"{location}/priors").json()["priors"]
    assert {p["term"] for p in priors} >= {"x", "1|g"}

    # Only a gaussian likelihood reduces to sums per group; the others read every row.
    likelihood = client.get(f"{location}/diagnostics").json()["likelihood"]
    assert likelihood == ("sufficient_statistics" if family == "gaussian" else "row_wise")
