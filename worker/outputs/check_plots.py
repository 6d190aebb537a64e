"""Plots that hold the model against its data, by ArviZ (arviz_plots): ``ppc``, ``loo_pit``
and ``pareto_k``.

ppc: the response's distribution against :data:`PPC_DRAWS` data sets replicated from
evenly thinned posterior draws on the rows the model was fitted on (drawn as ``GET /ppc``
draws them, seeded): densities for a continuous response, a rootogram (each value's
observed frequency against its replicated interval, square-root scale) for counts,
successes, 0/1 and categories (as 0-based positions).

loo_pit: ``PIT_i = P(y_rep_i <= y_i | y_-i)``, row i's predictive distribution had the
model been fitted without it; a calibrated model has uniform PIT values. The values are
the fit's stored LOO's (``worker.derived``: read if stored, else computed and stored, as
``GET /loo`` does; from each draw's predictive CDF, see ``worker.modeling.loo``), drawn as
ArviZ's ``plot_loo_pit`` draws them: the ECDF's difference from uniform with ArviZ's test
of uniformity (``pot_c``: its p-value, suspicious points marked), and the KS distance
``/loo`` reports. A family without a
CDF here (``cumulative``) has no LOO-PIT: refused (422 naming ``kind``). A LOO stored
before LOO-PIT values were kept is computed again for the plot (not stored).

pareto_k: each row's Pareto k from the fit's PSIS-LOO (``worker.derived``: read if stored,
else computed and stored, as ``GET /loo`` does), with the lines 0, good k and 1.

Both LOO plots need 25 posterior draws at least (5 in the Pareto tail): a fit with fewer
is refused (422 naming ``kind``).
"""

from __future__ import annotations

import warnings

import arviz_plots as azp
import bambi as bmb
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from service.core.artifacts import Artifacts
from service.core.families import family as family_named
from service.core.protocol import PlotCall
from worker.derived import pointwise
from worker.modeling.building import frame
from worker.modeling.cache import FittedModel
from worker.modeling.log_density import CDFS
from worker.modeling.loo import PointwiseLoo, loo_pit_uniformity, pointwise_loo
from worker.modeling.ppc import (
    ObservedResponse,
    observed_response,
    replicated_responses,
    thinned,
)
from worker.modeling.prediction import OBS, chunks, fitted_parameters, rows_per_chunk
from worker.modeling.summaries import SAMPLE_DIMS
from worker.outputs.figures import WIDTH_IN, arviz_figure, refuse

PPC_DRAWS = 50
#: PSIS needs 5 draws in the Pareto tail: 25 draws at least.
MIN_LOO_DRAWS = 25
DISCRETE = frozenset({"binary", "binomial", "count", "ordinal"})
HEIGHT_IN = 4.5
#: Seeds the replicated data.
SEED = 0


def ppc(call: PlotCall, fitted: FittedModel, artifacts: Artifacts) -> Figure:
    """The observed response's distribution against replicated ones."""
    model, spec = fitted.model, fitted.spec
    kind = family_named(spec.family).response
    data = frame(spec.columns, spec)
    response = observed_response(model, data, kind)
    replicated = _replicated(model, thinned(fitted.posterior, PPC_DRAWS), data, response)
    observed = response.y
    if kind in DISCRETE:
        replicated, observed = replicated.astype(np.int64), observed.astype(np.int64)
    name = _response_name(model)
    tree = xr.DataTree.from_dict(
        {
            "posterior_predictive": xr.Dataset({name: ((*SAMPLE_DIMS, OBS), replicated)}),
            "observed_data": xr.Dataset({name: ((OBS,), observed)}),
        }
    )
    size = {"figsize": (WIDTH_IN, HEIGHT_IN)}
    if kind in DISCRETE:
        with warnings.catch_warnings():  # chosen for 0/1 too: it shows both frequencies
            warnings.filterwarnings("ignore", "Variables .* look binary", UserWarning)
            collection = azp.plot_ppc_rootogram(tree, backend="matplotlib", figure_kwargs=size)
        what = "frequency of each value, observed (black) and replicated"
    else:
        collection = azp.plot_ppc_dist(tree, kind="kde", backend="matplotlib", figure_kwargs=size)
        what = "observed (black) and replicated data"
    fig = arviz_figure(collection)
    fig.suptitle(f"Posterior predictive check: {what}")
    return fig


def loo_pit(call: PlotCall, fitted: FittedModel, artifacts: Artifacts) -> Figure:
    """The ECDF of the LOO-PIT values against the uniform (see the module's text)."""
    spec = fitted.spec
    if spec.family not in CDFS:
        raise refuse("kind", f"a {spec.family} model has no LOO-PIT here (its predictive CDF)")
    values = _loo(call, fitted, artifacts)
    if values.pit is None:  # stored before LOO-PIT values were kept
        data = frame(spec.columns, spec)
        values = pointwise_loo(fitted.model, fitted.posterior, data, spec.family)
    assert values.pit is not None
    tree = xr.DataTree.from_dict(
        {"loo_pit": xr.Dataset({_response_name(fitted.model): ((OBS,), values.pit)})}
    )
    collection = azp.plot_ecdf_pit(
        tree,
        group="loo_pit",
        sample_dims=[OBS],
        method="pot_c",
        visuals={"xlabel": {"text": "LOO-PIT"}, "ylabel": {}, "remove_axis": False},
        backend="matplotlib",
        figure_kwargs={"figsize": (WIDTH_IN, HEIGHT_IN)},
    )
    fig = arviz_figure(collection)
    uniformity = loo_pit_uniformity(values.pit)
    k = values.elpd_data().good_k
    above = int((values.pareto_k > k).sum())
    fig.suptitle(
        f"LOO-PIT: ECDF minus uniform; KS distance {uniformity.ks_distance:.3f} "
        f"(5% threshold {uniformity.threshold:.3f})"
        + (f"\n{above} rows have Pareto k above {k:.2f}: their PIT is unreliable" if above else "")
    )
    return fig


def pareto_k(call: PlotCall, fitted: FittedModel, artifacts: Artifacts) -> Figure:
    """Each row's Pareto k from the fit's PSIS-LOO."""
    values = _loo(call, fitted, artifacts)
    data = values.elpd_data()
    k = values.pareto_k
    collection = azp.plot_khat(
        data,
        visuals={"hlines": {}},
        backend="matplotlib",
        figure_kwargs={"figsize": (WIDTH_IN, HEIGHT_IN)},
    )
    fig = arviz_figure(collection)
    fig.suptitle(
        f"Pareto k of each row's PSIS-LOO: {int((k <= data.good_k).sum())} good "
        f"(k <= {data.good_k:.2f}), {int(((k > data.good_k) & (k <= 1)).sum())} bad, "
        f"{int((k > 1).sum())} very bad"
    )
    return fig


def _loo(call: PlotCall, fitted: FittedModel, artifacts: Artifacts) -> PointwiseLoo:
    """The fit's pointwise PSIS-LOO (read if stored, else computed and stored)."""
    draws = fitted.posterior.sizes["chain"] * fitted.posterior.sizes["draw"]
    if draws < MIN_LOO_DRAWS:
        raise refuse(
            "kind",
            f"a {call.kind} plot needs the fit's PSIS-LOO, which needs at least "
            f"{MIN_LOO_DRAWS} posterior draws; this fit has {draws}",
        )
    return pointwise(artifacts, call.fit_id, fitted)


def _replicated(
    model: bmb.Model, posterior: xr.Dataset, data: pd.DataFrame, response: ObservedResponse
) -> np.ndarray:
    """Responses (chain, draw, row) drawn from each posterior draw, rows in chunks."""
    parts = []
    for index, start, stop in chunks(len(data), rows_per_chunk(model, posterior)):
        part = data.iloc[start:stop].reset_index(drop=True)
        extended = fitted_parameters(model, posterior, part)
        rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(index,)))
        parts.append(replicated_responses(model, extended, part, rng, _rows(response, start, stop)))
    return np.concatenate(parts, axis=2)


def _rows(response: ObservedResponse, start: int, stop: int) -> ObservedResponse:
    trials = None if response.trials is None else response.trials[start:stop]
    return ObservedResponse(response.y[start:stop], trials, response.categories)


def _response_name(model: bmb.Model) -> str:
    return str(model.response_term.name)
