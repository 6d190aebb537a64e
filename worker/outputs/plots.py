"""A fit's plots (``PlotCall``, ``GET /v1/fits/{id}/plots/{kind}``), drawn by a worker and
stored beside the fit's results under the call's file name.

    kind         what it shows                                        drawn by
    -----------  ---------------------------------------------------  ----------------------
    trace        each main parameter's draws by chain and its rank    arviz_plots: trace +
                 plot                                                 rank (combine_plots)
    forest       fixed effects and group SDs: means, 50% and prob     plot_forest
                 HDIs
    caterpillar  one factor's levels sorted by effect, HDIs, n per    matplotlib
                 level; a page of 60 levels, or all with thinned
                 labels
    shrinkage    each level's own estimate against its partially      matplotlib
                 pooled one, by its rows, with the population mean
    ppc          the response's distribution against replicated ones plot_ppc_dist or
                                                                      plot_ppc_rootogram
    loo_pit      the ECDF of LOO-PIT values against the uniform       plot_ecdf_pit (as
                                                                      plot_loo_pit)
    pareto_k     each row's Pareto k from the fit's PSIS-LOO          plot_khat

Modules: ``posterior_plots`` (trace, forest), ``group_plots`` (caterpillar, shrinkage),
``check_plots`` (ppc, loo_pit, pareto_k), ``figures`` (style, sizes, saving, choices).
The same call gives the same bytes (``figures``); sizes are bounded (at most 1,600 x
2,400 px at 100 dpi), and so is each kind's work (see each module).
"""

from __future__ import annotations

from collections.abc import Callable

from matplotlib.figure import Figure

from service.core.artifacts import Artifacts
from service.core.errors import NotFound
from service.core.protocol import FileWritten, PlotCall
from worker.modeling.cache import FittedModel
from worker.outputs import check_plots, group_plots, posterior_plots
from worker.outputs.figures import drawing, save

Draw = Callable[[PlotCall, FittedModel, Artifacts], Figure]

DRAWERS: dict[str, Draw] = {
    "trace": lambda call, fitted, _: posterior_plots.trace(call, fitted),
    "forest": lambda call, fitted, _: posterior_plots.forest(call, fitted),
    "caterpillar": lambda call, fitted, _: group_plots.caterpillar(call, fitted),
    "shrinkage": lambda call, fitted, _: group_plots.shrinkage(call, fitted),
    "ppc": check_plots.ppc,
    "loo_pit": check_plots.loo_pit,
    "pareto_k": check_plots.pareto_k,
}


def write_plot(artifacts: Artifacts, call: PlotCall, fitted: FittedModel) -> FileWritten:
    """Draw the call's plot and store it (NotFound if the fit was deleted meanwhile)."""
    name = call.file_name()
    with drawing():
        fig = DRAWERS[call.kind](call, fitted, artifacts)
        try:
            with artifacts.atomic_path(call.fit_id, name, create=False) as path:
                save(fig, path, call.format)
                size = path.stat().st_size
        except FileNotFoundError as exc:
            raise NotFound("the fit was deleted") from exc
    return FileWritten(name=name, size=size)
