"""The README's pictures: every plot of the seed study's fit, fetched over HTTP as PNG.

Start the service (``make run``), then: ``.venv/bin/python examples/plots.py`` (``API``
names another service; ``OUT`` another folder than ``docs/images``). The fit is the one
``examples/seed_study.py`` makes (the same seeded request: fitted once), and each plot is
saved as ``plot-{kind}.png``, with the time its first answer took (drawn by a worker).
The files are re-encoded with a palette of 128 colours (a third of the size, the same
picture to the eye) to keep the repository small.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
API = os.environ.get("API", "http://127.0.0.1:8000")
OUT = Path(os.environ.get("OUT", ROOT / "docs" / "images"))
KINDS = ("trace", "forest", "caterpillar", "shrinkage", "ppc", "loo_pit", "pareto_k")


def load_students() -> list[dict[str, Any]]:
    """484 students: their school and their score."""
    with (ROOT / "data" / "seed_students.csv").open() as handle:
        return [
            {"school": int(row["school"]), "score": float(row["score"])}
            for row in csv.DictReader(handle)
        ]


def seed_fit(client: httpx.Client) -> str:
    """The seed study's fit (4 chains x 1000 draws, seed 2024); its location."""
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
    while (fit := client.get(location).json())["status"] not in ("succeeded", "failed"):
        time.sleep(1)
    if fit["status"] != "succeeded":
        raise SystemExit(f"the fit failed: {fit['error']}")
    return location


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=API, timeout=300) as client:
        location = seed_fit(client)
        for kind in KINDS:
            started = time.perf_counter()
            response = client.get(f"{location}/plots/{kind}", params={"format": "png"})
            response.raise_for_status()
            seconds = time.perf_counter() - started
            path = OUT / f"plot-{kind}.png"
            image = Image.open(io.BytesIO(response.content)).convert("RGB")
            palette = image.quantize(128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            palette.save(path, optimize=True)
            size = path.stat().st_size / 1024
            print(f"{kind:<12} {seconds:5.2f} s  {image.width} x {image.height}  {size:5.1f} KiB")


if __name__ == "__main__":
    main()
