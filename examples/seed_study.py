"""The seed study with httpx: fit, summarise, read school effects and their shrinkage,
check, predict, then compare complete, no and partial pooling by PSIS-LOO.

Start the service (``make run``), then: ``.venv/bin/python examples/seed_study.py``.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import httpx

API = os.environ.get("API", "http://127.0.0.1:8000")
DATA = Path(__file__).resolve().parents[1] / "data" / "seed_students.csv"


def load_students() -> list[dict[str, Any]]:
    """484 students: their school and their score."""
    with DATA.open() as handle:
        return [
            {"school": int(row["school"]), "score": float(row["score"])}
            for row in csv.DictReader(handle)
        ]


def wait(client: httpx.Client, location: str) -> dict[str, Any]:
    """Poll the fit until it is final, showing progress."""
    while True:
        fit: dict[str, Any] = client.get(location).json()
        progress = fit.get("progress") or {}
        print(f"  {fit['status']:<10} {progress.get('phase', '')} {progress.get('fraction', '')}")
        if fit["status"] in ("succeeded", "failed", "cancelled"):
            return fit
        time.sleep(1)


def fit(client: httpx.Client, formula: str, name: str) -> str:
    """Fit one model of the seed study; its location once it succeeded."""
    response = client.post(
        "/v1/fits",
        json={
            "data": load_students(),
            "formula": formula,
            "sampler": {"chains": 4, "draws": 1000, "tune": 1000, "seed": 2024},
            "name": name,
        },
    )
    response.raise_for_status()
    location = response.headers["location"]
    print(f"submitted {name}: {location}")
    record = wait(client, location)
    if record["status"] != "succeeded":
        raise SystemExit(f"the fit {record['status']}: {record['error']}")
    print(f"took {record['timings']['total_s']:.1f} s in the worker")
    return location


def main() -> None:
    """Walk through the seed study."""
    with httpx.Client(base_url=API, timeout=120) as client:
        location = fit(client, "score ~ (1 | school)", "partial pooling")

        print("\nparameters (mean, 94% HDI):")
        for p in client.get(f"{location}/summary").json()["parameters"]:
            print(f"  {p['name']:<16} {p['mean']:7.2f}  [{p['lower']:.2f}, {p['upper']:.2f}]")

        print("\nschools (n, own mean, partially pooled coef, pooling factor):")
        for level in client.get(f"{location}/groups/school").json()["levels"]:
            effect = level["effects"][0]
            print(
                f"  school {level['level']:>3}  n={level['n_obs']:>3}  "
                f"own {effect['no_pooling']['estimate']:6.2f}  "
                f"coef {effect['coef']['mean']:6.2f}  pooling {effect['pooling_factor']:.3f}"
            )

        diagnostics = client.get(f"{location}/diagnostics").json()
        print(f"\nconvergence: {diagnostics['verdict']}")
        for warning in diagnostics["warnings"]:
            print(f"  - {warning}")

        predictions = client.post(
            f"{location}/predictions",
            json={"data": {"school": [3, 101, 102]}, "kind": "response", "seed": 1},
        ).json()
        print("\npredicted scores for a new student:")
        for row, school in zip(predictions["rows"], [3, 101, 102], strict=True):
            print(
                f"  school {school:>3} ({row['groups']['school']}): {row['mean']:6.2f} "
                f"[{row['lower']:.2f}, {row['upper']:.2f}]"
            )

        loo = client.get(f"{location}/loo").json()
        print(f"\nPSIS-LOO: elpd_loo {loo['elpd_loo']:.1f} (SE {loo['se']:.1f})")
        others = [fit(client, "score ~ 1", "complete pooling")]
        others.append(fit(client, "score ~ 0 + C(school)", "no pooling"))
        ids = [url.rsplit("/", 1)[1] for url in [location, *others]]
        comparison = client.post("/v1/comparisons", json={"fit_ids": ids}).json()
        print("\ncomparison (elpd_loo, difference from the best with its SE):")
        for model in comparison["models"]:
            print(
                f"  {model['name']:<17} {model['elpd_loo']:9.1f}  "
                f"{model['elpd_diff']:7.1f} ({model['se_diff']:.1f})"
            )
        print(comparison["verdict"])


if __name__ == "__main__":
    main()
