"""The seed study with httpx: fit, summarise, read school effects, check, predict.

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


def main() -> None:
    """Walk through the seed study."""
    with httpx.Client(base_url=API, timeout=120) as client:
        response = client.post(
            "/v1/fits",
            json={
                "data": load_students(),
                "formula": "score ~ (1 | school)",
                "sampler": {"chains": 4, "draws": 1000, "tune": 1000, "seed": 2024},
                "name": "seed study",
            },
        )
        response.raise_for_status()
        location = response.headers["location"]
        print(f"submitted {location}")
        fit = wait(client, location)
        if fit["status"] != "succeeded":
            raise SystemExit(f"the fit {fit['status']}: {fit['error']}")
        print(f"took {fit['timings']['total_s']:.1f} s in the worker")

        print("\nparameters (mean, 94% HDI):")
        for p in client.get(f"{location}/summary").json()["parameters"]:
            print(f"  {p['name']:<16} {p['mean']:7.2f}  [{p['lower']:.2f}, {p['upper']:.2f}]")

        print("\nschools (n, ranef, coef):")
        for level in client.get(f"{location}/groups/school").json()["levels"]:
            effect = level["effects"][0]
            print(
                f"  school {level['level']:>3}  n={level['n_obs']:>3}  "
                f"ranef {effect['ranef']['mean']:6.2f}  coef {effect['coef']['mean']:6.2f}"
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


if __name__ == "__main__":
    main()
