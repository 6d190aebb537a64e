"""Plots of the posterior's parameters, by ArviZ (arviz_plots): ``trace`` and ``forest``.

``var`` names parameters as the summary does (``Intercept``, ``x``, ``1|g_sigma``,
``sigma``...) or a group term (``1|g``: each level's effect). By default the trace shows
the main parameters (fixed effects, group SDs and correlations, auxiliary parameters) and
the forest the fixed effects and group SDs. A plot has a row per value: a trace at most
:data:`MAX_TRACE_ROWS`, a forest at most :data:`MAX_FOREST_ROWS` (the caterpillar shows
every level of a factor); a default that has more shows the first ones, and says so.
"""

from __future__ import annotations

import arviz_plots as azp
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from service.core.protocol import PlotCall
from worker.modeling.cache import FittedModel
from worker.modeling.summaries import SAMPLE_DIMS, group_terms, parameter_roles
from worker.outputs.figures import WIDTH_IN, arviz_figure, clamped, refuse, term_name

MAX_TRACE_ROWS = 8
MAX_FOREST_ROWS = 60
#: The parameters the forest shows unless ``var`` says otherwise.
FOREST_KINDS = ("fixed", "group_sd")


def trace(call: PlotCall, fitted: FittedModel) -> Figure:
    """Each parameter's draws by chain (left) and its rank plot (right): chains that
    explore the same posterior overlap on the left and stay near zero on the right."""
    names, note = _chosen(call, fitted, None, MAX_TRACE_ROWS)
    tree = xr.DataTree.from_dict(
        {"posterior": fitted.posterior, "sample_stats": fitted.sample_stats}
    )
    rows = _rows(fitted.posterior, names)
    collection = azp.combine_plots(  # type: ignore[no-untyped-call]
        tree,
        [
            (azp.plot_trace, {"visuals": {"trace": {"width": 0.6, "alpha": 0.8}}}),
            (azp.plot_rank, {}),
        ],
        var_names=names,
        plot_names=["trace", "rank"],
        backend="matplotlib",
        figure_kwargs={"figsize": clamped(WIDTH_IN, 0.9 + 1.9 * rows)},
    )
    fig = arviz_figure(collection)
    fig.suptitle("Trace and rank plots by chain" + note)
    return fig


def forest(call: PlotCall, fitted: FittedModel) -> Figure:
    """Posterior mean, 50% and ``prob`` HDIs of the fixed effects and group SDs."""
    names, note = _chosen(call, fitted, FOREST_KINDS, MAX_FOREST_ROWS)
    tree = xr.DataTree.from_dict({"posterior": fitted.posterior})
    rows = _rows(fitted.posterior, names)
    collection = azp.plot_forest(
        tree,
        var_names=names,
        combined=True,
        ci_kind="hdi",
        ci_probs=sorted({0.5, call.prob}),
        backend="matplotlib",
        figure_kwargs={"figsize": clamped(WIDTH_IN, max(2.6, 1.4 + 0.32 * rows))},
    )
    fig = arviz_figure(collection)
    fig.suptitle(f"Posterior means with 50% and {call.prob:.0%} HDIs" + note)
    return fig


def _chosen(
    call: PlotCall, fitted: FittedModel, kinds: tuple[str, ...] | None, max_rows: int
) -> tuple[list[str], str]:
    """The variables to plot (``var``, else the defaults of ``kinds``: None for every main
    parameter) and a note for the title when the defaults were cut to ``max_rows``."""
    posterior = fitted.posterior
    roles = {n: r for n, r in parameter_roles(fitted.model).items() if n in posterior}
    groups = [term_name(t) for ts in group_terms(fitted.model).values() for t in ts]
    known = [*roles, *(g for g in groups if g in posterior)]
    if call.var:
        names = list(dict.fromkeys(call.var))
        for name in names:
            if name not in known:
                raise refuse(
                    "var", f"'{name[:60]}' is not a parameter of the model; it has {known[:30]}"
                )
            if not _varies(posterior[name]):
                raise refuse("var", f"'{name[:60]}' is fixed by its prior: it has no draws")
        rows = _rows(posterior, names)
        if rows > max_rows:
            raise refuse(
                "var",
                f"a {call.kind} plot shows at most {max_rows} values and these have {rows}"
                + ("; the caterpillar plot shows every level" if call.kind == "forest" else ""),
            )
        return names, ""
    defaults = [
        n for n, r in roles.items() if (kinds is None or r.kind in kinds) and _varies(posterior[n])
    ]
    names = []
    for name in defaults:
        if _rows(posterior, [*names, name]) > max_rows:
            break
        names.append(name)
    if not names:
        raise refuse("var", "the model has no sampled parameter to plot by default: name some")
    if len(names) < len(defaults):
        return names, f" (the first {len(names)} of {len(defaults)} parameters: choose with var)"
    return names, ""


def _rows(posterior: xr.Dataset, names: list[str]) -> int:
    """Values per draw of the variables: the rows they take."""
    return sum(int(np.prod(posterior[n].shape[2:], dtype=int)) for n in names)


def _varies(values: xr.DataArray) -> bool:
    """Whether a variable has draws (a Constant prior's value has none)."""
    return bool(values.std(SAMPLE_DIMS).max() > 0)
