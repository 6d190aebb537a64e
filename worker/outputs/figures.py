"""What every plot shares: its style, its size in pixels, how it is saved, and the choices a
call makes (which parameters, which grouping factor), refused with the field named.

Sizes are set in inches at a fixed :data:`DPI`, so a plot is ``inches x DPI`` pixels: 8
inches wide (800 px) unless it has several panels, at most :data:`MAX_WIDTH_IN` by
:data:`MAX_HEIGHT_IN` (1,600 x 2,400 px). Layout is constrained, never "tight" (a tight
bounding box would make the size depend on the labels).

Saved bytes depend on the call alone: SVG ids are hashed with a fixed salt
(``svg.hashsalt``) and carry no date; PNGs carry no time. Fonts are matplotlib's own
(DejaVu Sans), so another machine draws the same glyphs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import arviz_plots  # noqa: F401  (registers ArviZ's matplotlib styles)
import bambi as bmb
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from bambi.utils import get_aliased_name
from matplotlib.artist import Artist
from matplotlib.collections import Collection, LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from service.core.errors import InvalidRequest
from service.core.protocol import PlotCall
from worker.modeling.summaries import group_terms

DPI = 100
WIDTH_IN = 8.0
MAX_WIDTH_IN = 16.0
MAX_HEIGHT_IN = 24.0
#: ArviZ's style, smaller type for an 800 px figure, and what makes the bytes repeatable.
STYLE: list[str | dict[str, Any]] = [
    "arviz-variat",
    {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "legend.fontsize": 9,
        "figure.titlesize": 12,
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "svg.hashsalt": "hbm-service",
        "svg.fonttype": "path",
        "font.family": "DejaVu Sans",
    },
]
#: Points of one line or set of marks beyond which SVG embeds it as an image.
RASTER_POINTS = 5000
#: Metadata written into each format: nothing that changes from one run to the next.
METADATA: dict[str, dict[str, str | None]] = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
}


@contextmanager
def drawing() -> Iterator[None]:
    """The plots' style (and saving settings) for drawing and saving; the figures pyplot
    made meanwhile (ArviZ's) are closed at the end, whatever happened."""
    before = set(plt.get_fignums())
    try:
        with matplotlib.style.context(STYLE):
            yield
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)


def figure(width_in: float, height_in: float) -> Figure:
    """A figure outside pyplot (nothing to close), within the size limits."""
    return Figure(figsize=clamped(width_in, height_in), dpi=DPI, layout="constrained")


def clamped(width_in: float, height_in: float) -> tuple[float, float]:
    """A size within the limits."""
    return min(width_in, MAX_WIDTH_IN), min(height_in, MAX_HEIGHT_IN)


def arviz_figure(collection: Any) -> Figure:
    """The matplotlib figure of an ArviZ PlotCollection."""
    found = collection.viz["figure"]
    fig = found.item() if hasattr(found, "item") else found
    assert isinstance(fig, Figure)
    return fig


def save(fig: Figure, path: Path, fmt: str) -> None:
    """Write the figure at the fixed DPI and its size (clamped again: ArviZ sets its own).
    In SVG, a line or a set of marks with more than :data:`RASTER_POINTS` points is drawn
    as an image (a 100,000-row Pareto k plot was 10 MB of SVG, 1 s to write)."""
    fig.set_size_inches(*clamped(*fig.get_size_inches()))
    if fmt == "svg":
        for ax in fig.axes:
            for artist in [*ax.lines, *ax.collections]:
                if _points(artist) > RASTER_POINTS:
                    artist.set_rasterized(True)
    fig.savefig(path, format=fmt, dpi=DPI, metadata=METADATA[fmt])


def _points(artist: Artist) -> int:
    if isinstance(artist, Line2D):
        return int(np.asarray(artist.get_xydata()).shape[0])
    if isinstance(artist, LineCollection):
        return len(artist.get_segments())
    if isinstance(artist, Collection):
        return max(int(np.asarray(artist.get_offsets()).shape[0]), len(artist.get_paths()))
    return 0


def refuse(field: str, message: str) -> InvalidRequest:
    """A 422 naming ``field`` (a query parameter of the plot's URL)."""
    return InvalidRequest.one(field, message)


def choose_factor(call: PlotCall, model: bmb.Model) -> tuple[str, list[Any]]:
    """The grouping factor a call names, or the model's only one, with its terms."""
    factors = group_terms(model)
    if not factors:
        raise refuse("kind", f"a {call.kind} plot shows group effects; the model has none")
    if call.factor is None:
        if len(factors) > 1:
            raise refuse("factor", f"the model has several grouping factors: {sorted(factors)}")
        return next(iter(factors.items()))
    if call.factor not in factors:
        raise refuse(
            "factor",
            f"the model has no grouping factor '{call.factor[:60]}'; it has {sorted(factors)}",
        )
    return call.factor, factors[call.factor]


def factor_dim(values: xr.DataArray) -> str:
    """The dimension of a group term's levels."""
    return str(next(d for d in values.dims if str(d).endswith("__factor_dim")))


def term_name(term: Any) -> str:
    """A group term's name in the posterior (``1|school``)."""
    return str(get_aliased_name(term))
