"""Plots of one grouping factor's levels, drawn with matplotlib (ArviZ has neither):
``caterpillar`` and ``shrinkage``.

Caterpillar: each level's effect (``ranef``, its deviation from the population) with its
HDI at ``prob``, levels sorted by the first term's mean and labelled with their number of
rows; one panel per term of the factor (``(x | g)``: intercepts and slopes, same order).
Up to :data:`PAGE_LEVELS` levels are all labelled. A larger factor is drawn whole with
every k-th level labelled (at most :data:`PAGE_LEVELS` labels), and ``page=p`` draws the
p-th run of :data:`PAGE_LEVELS` levels of the same order with every label: a 1,000-level
factor is one overview and 17 readable pages.

Shrinkage (the seed study's picture): for each level, its own estimate (no pooling: its
own least squares, ``worker.modeling.shrinkage``) and its partially pooled coefficient
(``coef``: the population mean plus the level's effect, posterior mean), joined by a line,
against the level's number of rows, with the population mean: small levels move furthest
toward it. Drawn where the own estimate is defined: gaussian models, and intercept-only
logit models on the link scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

from service.core.protocol import PlotCall
from worker.modeling import mcmc_stats
from worker.modeling.cache import FittedModel
from worker.modeling.shrinkage import TermShrinkage
from worker.modeling.shrinkage import shrinkage as own_estimates
from worker.modeling.summaries import SAMPLE_DIMS, _fixed_counterpart
from worker.outputs.figures import WIDTH_IN, choose_factor, factor_dim, figure, refuse, term_name

PAGE_LEVELS = 60
#: Panels (terms, or columns of a categorical term) a plot draws at most.
MAX_PANELS = 4
LABEL_CHARS = 24
#: Height of a labelled level's row, and of the overview of a large factor (inches).
ROW_IN = 0.17
OVERVIEW_IN = 9.0
#: Draws (chain x draw x level) whose HDIs are computed at once.
BLOCK_VALUES = 2**22


@dataclass(frozen=True)
class Column:
    """One panel's values: a term (and column) of the factor, per level."""

    label: str
    draws: np.ndarray  # (chain, draw, level)
    fixed: np.ndarray | None  # (chain, draw): the population part, when there is one
    position: int  # the column in the term's values (a categorical term has several)
    term: str


def caterpillar(call: PlotCall, fitted: FittedModel) -> Figure:
    """Each level's effect and HDI, sorted (see the module's text)."""
    factor, terms = choose_factor(call, fitted.model)
    columns = _columns(terms, fitted.posterior)[:MAX_PANELS]
    labels, counts = _levels(terms[0], fitted.posterior)
    order = np.argsort(-columns[0].draws.mean(axis=(0, 1)), kind="stable")  # highest first
    order, note = _page(call, factor, order)
    shown = len(order)
    step = max(1, math.ceil(shown / PAGE_LEVELS))
    height = 1.5 + ROW_IN * shown if step == 1 else OVERVIEW_IN
    fig = figure(WIDTH_IN + 2.5 * (len(columns) - 1), height)
    axes = fig.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    y = np.arange(shown)
    small = shown <= PAGE_LEVELS
    for ax, column in zip(axes, columns, strict=True):
        lower, upper = _hdi(column.draws, order, call.prob)
        mean = column.draws.mean(axis=(0, 1))[order]
        width, alpha, size = (1.2, 1.0, 3.5) if small else (0.4, 0.6, 1.2)
        ax.hlines(y, lower, upper, color="C0", linewidth=width, alpha=alpha)
        ax.plot(mean, y, "o", color="C0", markersize=size)
        ax.axvline(0, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_title(column.label)
        ax.set_xlabel("deviation from the population")
    ticks = y[::step]
    axes[0].set_yticks(
        ticks, [f"{_short(labels[i])} (n={counts[i]})" for i in order[::step]], fontsize=8
    )
    axes[0].set_ylim(shown - 0.2, -0.8)  # the first level at the top
    fig.suptitle(f"{factor}: each level's effect with its {call.prob:.0%} HDI\n{note}")
    return fig


def shrinkage(call: PlotCall, fitted: FittedModel) -> Figure:
    """Each level's own estimate against its partially pooled one (see the module's text)."""
    factor, terms = choose_factor(call, fitted.model)
    own = own_estimates(fitted.model, fitted.posterior)
    columns = [c for c in _columns(terms, fitted.posterior) if c.term in own][:MAX_PANELS]
    columns = [c for c in columns if np.isfinite(own[c.term].estimate[:, c.position]).any()]
    if not columns:
        raise refuse(
            "kind",
            f"no level of '{factor}' has its own estimate: shrinkage is drawn for gaussian "
            "models and intercept-only logit models (bernoulli, binomial)",
        )
    _, counts = _levels(terms[0], fitted.posterior)
    fig = figure(WIDTH_IN, 0.6 + 4.4 * len(columns))
    axes = fig.subplots(len(columns), 1, squeeze=False)[:, 0]
    for ax, column in zip(axes, columns, strict=True):
        _shrinkage_panel(ax, column, own[column.term], counts)
    axes[0].legend(loc="best", frameon=False)
    fig.suptitle(f"Shrinkage of each level of {factor} toward the population")
    return fig


def _hdi(draws: np.ndarray, levels: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """The HDI of each of ``levels`` (chain, draw, level draws), a block of levels at a
    time: sorting copies the draws, and a 20,000-level term of 4,000 draws is 640 MB."""
    step = max(1, BLOCK_VALUES // (draws.shape[0] * draws.shape[1]))
    bounds = [
        mcmc_stats.hdi(draws[:, :, levels[i : i + step]], prob) for i in range(0, len(levels), step)
    ]
    return np.concatenate([b[0] for b in bounds]), np.concatenate([b[1] for b in bounds])


def _page(call: PlotCall, factor: str, order: np.ndarray) -> tuple[np.ndarray, str]:
    """The levels (in plotting order) of the call's page, or all of them, and a note."""
    n_levels = len(order)
    pages = math.ceil(n_levels / PAGE_LEVELS)
    if call.page is None:
        if pages == 1:
            return order, f"{n_levels} levels"
        step = math.ceil(n_levels / PAGE_LEVELS)
        return order, f"{n_levels} levels, one in {step} labelled (page=1 to {pages}: all)"
    if call.page > pages:
        raise refuse(
            "page", f"'{factor}' has {n_levels} levels: pages 1 to {pages} of {PAGE_LEVELS}"
        )
    first = (call.page - 1) * PAGE_LEVELS
    order = order[first : first + PAGE_LEVELS]
    return (
        order,
        f"levels {first + 1}-{first + len(order)} of {n_levels} (page {call.page}/{pages})",
    )


def _shrinkage_panel(ax: Axes, column: Column, own: TermShrinkage, counts: np.ndarray) -> None:
    estimate = own.estimate[:, column.position]
    pooling = own.pooling[:, column.position]
    fixed = 0.0 if column.fixed is None else float(column.fixed.mean())
    pooled = fixed + column.draws.mean(axis=(0, 1))
    defined = np.isfinite(estimate)
    x, log = _spread(counts)
    ax.vlines(x[defined], estimate[defined], pooled[defined], color="0.6", linewidth=0.8)
    ax.plot(x, pooled, "o", color="C0", ms=4.5, label="partially pooled", zorder=2)
    own_style: dict[str, Any] = {"mfc": "none", "mec": "0.2", "mew": 1.0, "ms": 6.5, "zorder": 3}
    ax.plot(x[defined], estimate[defined], "o", label="own estimate", **own_style)
    ax.axhline(fixed, color="C1", linestyle="--", linewidth=1, label="population mean")
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ties = len(np.unique(counts)) < len(counts)
    ax.set_xlabel("rows in the level (n)" + (", levels with the same n spread" if ties else ""))
    ax.set_ylabel("coefficient" if column.fixed is not None else "effect")
    if np.isfinite(pooling).any():
        low, high = np.nanmin(pooling), np.nanmax(pooling)
        ax.set_title(f"{column.label}: pooling factor {low:.2f} to {high:.2f}")
    else:
        ax.set_title(column.label)


def _spread(counts: np.ndarray) -> tuple[np.ndarray, bool]:
    """Where each level goes along n (and whether n is on a log scale): levels with the
    same n are spread evenly around it, in level order, so that they do not hide each
    other."""
    x = counts.astype(float)
    log = bool(x.max() >= 8 * max(x.min(), 1))
    spread = np.zeros_like(x)
    for n in np.unique(counts):
        same = np.flatnonzero(counts == n)
        if same.size > 1:
            spread[same] = np.linspace(-0.3, 0.3, same.size)
    return (x * np.exp(spread * 0.25) if log else x + spread), log


def _columns(terms: list[Any], posterior: xr.Dataset) -> list[Column]:
    """Each term's values per level, one Column per column of the term."""
    columns = []
    for term in terms:
        name = term_name(term)
        values = posterior[name]
        levels = factor_dim(values)
        values = values.transpose(*SAMPLE_DIMS, levels, ...)
        draws = values.values.reshape(*values.shape[:3], -1)
        extra = [d for d in values.dims if d not in (*SAMPLE_DIMS, levels)]
        names = [", ".join(str(c) for c in coords) for coords in _coords(values, extra)]
        counterpart = _fixed_counterpart(term, posterior)
        fixed = None if counterpart is None else counterpart.transpose(*SAMPLE_DIMS).values
        for j in range(draws.shape[3]):
            label = name if not extra else f"{name}[{names[j]}]"
            columns.append(Column(label, draws[..., j], fixed if not extra else None, j, name))
    return columns


def _coords(values: xr.DataArray, dims: list[Any]) -> list[tuple[Any, ...]]:
    grids = [values[d].values for d in dims]
    return [
        tuple(g[i] for g, i in zip(grids, index, strict=True))
        for index in np.ndindex(*(len(g) for g in grids))
    ]


def _levels(term: Any, posterior: xr.Dataset) -> tuple[list[str], np.ndarray]:
    """The factor's level labels and rows per level, in the order of its effects."""
    values = posterior[term_name(term)]
    labels = [str(level) for level in values[factor_dim(values)].values]
    return labels, np.bincount(np.asarray(term.group_index), minlength=len(labels))


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
