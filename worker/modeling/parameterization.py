"""How group-level effects are parameterized for the sampler (the posterior never changes).

Bambi's default is non-centred: ``b_j = sigma_g * z_j``. It suits groups with little data,
where the data hardly pin down each ``b_j`` (eight schools). With plenty of data per group
it mixes slowly, and so does Bambi's centred form ``b_j ~ Normal(0, sigma_g)``: either way
the common intercept and the mean of the ``b_j`` move together (in the seed study, bulk ESS
of the intercept is about 120 of 4,000 draws either way).

The centred form here also centres the group effects on the intercept (hierarchical
centring, Gelfand, Sahu & Carlin 1995): it samples the group means
``m_j ~ Normal(Intercept, sigma_g)`` and keeps ``b_j = m_j - Intercept`` as Bambi's
variable, a change of variables with unit Jacobian, so the model is exactly Bambi's. The
seed study's intercept then reaches a bulk ESS of several thousand.

``auto`` (the default) picks per fit, from the data, before sampling:

- centred when the family is gaussian, the model has no distributional formulas, and the
  data identify every group term well: on the residuals of a least-squares fit on the
  common terms, the per-level estimates of the term (level means for an intercept,
  within-level slopes for a slope) vary more than their sampling noise explains, by at
  least that noise again (for an intercept with ``n`` rows per level,
  ``n * tau^2 / sigma^2 >= 1``: moment estimates, as in a one-way ANOVA);
- non-centred otherwise (other families, one row per level, weakly identified groups, or
  slopes on factors with few rows per level, as in the radon model with county slopes).

Correlated group terms (``correlated``) follow the same choice: non-centred,
``b_j = diag(s) L z_j``, or centred, level means ``m_j ~ MvNormal(c, Sigma)`` with
``b_j = m_j - c``, where ``c`` holds the common terms the block's terms deviate from
(``Intercept``, ``x`` for ``(1 + x | g)``) when the block holds the intercept chosen here,
else 0. Each term of the block is judged on its own, as an independent term would be.

The benchmark in ``bench/`` and its table in the README show the effect case by case.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import bambi as bmb
import numpy as np
import pytensor.tensor as pt
from pymc.model.fgraph import ModelFreeRV, model_deterministic, model_free_rv
from pytensor.graph.fg import FunctionGraph
from pytensor.tensor.random.basic import NormalRV

from worker.modeling.building import CorrelatedModel

#: Identification ratio from which a grouping factor is sampled centred.
CENTRED_FROM = 1.0
#: The suffix of the group means sampled in place of a centred group intercept.
MEANS_SUFFIX = "_means"


@dataclass(frozen=True)
class Choice:
    """The parameterization a fit samples with, and why."""

    parameterization: str  # "centered" | "noncentered"
    reason: str
    centre_on_intercept: str | None = None  # the group term centred on the intercept

    def diagnostics(self) -> dict[str, str]:
        """The fields this choice adds to a fit's diagnostics."""
        return {"parameterization": self.parameterization, "parameterization_reason": self.reason}


def identification(residuals: np.ndarray, level: np.ndarray, z: np.ndarray) -> float | None:
    """How well the data pin down a group term's per-level effects: the variance of their
    per-level least-squares estimates beyond sampling noise, over that noise (for an
    intercept, ``n * tau^2 / sigma^2``). None when it cannot be told."""
    slope = bool(np.ptp(z) > 0)
    estimates, noise, squares, dof = [], [], 0.0, 0
    for j in np.unique(level):
        r, x = residuals[level == j], z[level == j]
        if slope:
            x = x - x.mean()
            sxx = float(x @ x)
            if len(r) < 3 or sxx <= 0:
                continue
            b = float(x @ (r - r.mean())) / sxx
            fitted = r.mean() + b * x
            estimates.append(b)
            noise.append(1 / sxx)
            dof += len(r) - 2
        else:
            if len(r) < 2:
                continue
            fitted = np.full_like(r, r.mean())
            estimates.append(float(r.mean()))
            noise.append(1 / len(r))
            dof += len(r) - 1
        squares += float(((r - fitted) ** 2).sum())
    if len(estimates) < 2 or dof <= 0 or squares <= 0:
        return None
    sampling = squares / dof * float(np.mean(noise))
    tau2 = max(float(np.var(estimates, ddof=1)) - sampling, 0.0)
    return tau2 / sampling


def choose(model: bmb.Model, requested: str) -> Choice:
    """The parameterization for ``model`` (not yet built) when ``requested`` is given."""
    terms = model.components[model.family.likelihood.parent].group_specific_terms
    intercept_terms = [name for name in terms if name.startswith("1|")]
    centre_on = _centre_on(model, intercept_terms)
    if requested == "centered":
        return Choice("centered", "requested", centre_on)
    if requested == "noncentered":
        return Choice("noncentered", "requested")
    if not terms:
        return Choice("noncentered", "no group-level terms")
    if model.family.name != "gaussian":
        return Choice("noncentered", "auto: not a gaussian model")
    if any(c.group_specific_terms or c.common_terms for c in _distributional(model)):
        return Choice("noncentered", "auto: distributional formulas")
    residuals = residuals_after_common_terms(model)
    ratios = {
        name: identification(
            residuals, np.asarray(term.group_index), np.asarray(term.predictor, dtype=float)
        )
        for name, term in terms.items()
        if np.asarray(term.predictor).ndim == 1
    }
    if len(ratios) < len(terms):
        return Choice("noncentered", "auto: a group term with several columns")
    weak = [name for name, r in ratios.items() if r is None or r < CENTRED_FROM]
    if weak:
        return Choice("noncentered", f"auto: groups weakly identified by the data ({weak[0]})")
    return Choice("centered", "auto: every group well identified by its data", centre_on)


def apply(model: bmb.Model, requested: str) -> Choice:
    """Choose the parameterization of a Bambi model that is not built yet, and set it."""
    choice = choose(model, requested)
    model.noncentered = choice.parameterization == "noncentered"
    if isinstance(model, CorrelatedModel):  # the block holding that intercept centres on it
        model.wanted_correlations = replace(
            model.wanted_correlations, centre_on=choice.centre_on_intercept
        )
    return choice


def residuals_after_common_terms(model: bmb.Model) -> np.ndarray:
    """The response less its least-squares fit on the common terms: what is left for the
    groups to explain (county-level predictors can explain most county differences)."""
    y = np.asarray(model.response_component.term.data, dtype=float).reshape(-1)
    design = model.components[model.family.likelihood.parent].design
    if not design.common:
        return y
    x = np.asarray(design.common).astype(float)
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    return np.asarray(y - x @ coefficients)


def _distributional(model: bmb.Model) -> list[Any]:
    parent = model.family.likelihood.parent
    return [c for name, c in model.components.items() if name != parent and hasattr(c, "terms")]


def _centre_on(model: bmb.Model, intercept_terms: list[str]) -> str | None:
    """The group intercept to centre on the common intercept: the factor with the most
    rows per level (only one factor can be centred on the intercept)."""
    component = model.components[model.family.likelihood.parent]
    if component.intercept_term is None or not intercept_terms:
        return None
    terms = component.group_specific_terms
    return min(intercept_terms, key=lambda name: len(terms[name].groups))


def centre_on_intercept(graph: FunctionGraph, term: str, intercept: str = "Intercept") -> bool:
    """Rewrite Bambi's centred ``term ~ Normal(0, sd)`` as ``term = m - Intercept`` with
    ``m ~ Normal(Intercept, sd)`` sampled instead; False when the graph has no such term."""
    free = {node.op.name: node for node in graph.apply_nodes if isinstance(node.op, ModelFreeRV)}
    group, common = free.get(term), free.get(intercept)
    if group is None or common is None or group.op.transform is not None:
        return False
    rv, value = group.inputs[0], group.inputs[1]
    if rv.owner is None or not isinstance(rv.owner.op, NormalRV):
        return False
    rng, size, mu, sd = rv.owner.inputs
    centre = common.outputs[0]
    centred_mu = pt.shape_padleft(centre, mu.type.ndim) if mu.type.ndim else centre  # type: ignore[attr-defined, no-untyped-call]
    means_rv = rv.owner.op.make_node(rng, size, centred_mu, sd).outputs[1]  # type: ignore[no-untyped-call]
    name = f"{term}{MEANS_SUFFIX}"
    means_rv.name = name
    means_value = value.type(name=name)
    means = model_free_rv(means_rv, means_value, None, name, *group.op.dims)
    effects = model_deterministic(means - centre, term, *group.op.dims)
    graph.replace(group.outputs[0], effects, import_missing=True)
    return True
