"""The seed study: 484 students in 20 schools, ``score ~ (1 | school)``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA_CSV = ROOT / "data" / "seed_students.csv"

FORMULA = "score ~ (1 | school)"
FAMILY = "gaussian"


def load_records() -> list[dict[str, Any]]:
    """The 484 students as ``{"school": int, "score": float}`` rows."""
    with DATA_CSV.open() as handle:
        return [
            {"school": int(row["school"]), "score": float(row["score"])}
            for row in csv.DictReader(handle)
        ]
