"""Correlated group effects: ``(1 + x | g)`` estimates the correlation of its terms.

For a parenthesised group term with ``k >= 2`` columns on one factor, the effects of level
``j`` are one vector, as in lme4, rstanarm and brms:

    b_j ~ MvNormal(0, Sigma),   Sigma = diag(s) R diag(s),   R ~ LKJ(eta)

with the Cholesky factor ``L`` of R (``L ~ LKJCholeskyCorr(k, eta)``, PyMC's ``LKJCorr``)
and ``s`` the terms' own SDs, each keeping the prior Bambi gives it (or the request sets
for the term, e.g. ``1|g``). ``eta = 1`` (brms' default) is uniform over correlation
matrices; larger values pull towards independence. Two forms, one posterior:

- non-centred (brms' parameterisation): ``z_j ~ Normal(0, I_k)``, ``b_j = diag(s) L z_j``,
  exactly MvNormal(0, Sigma) since ``diag(s) L`` is a Cholesky factor of Sigma;
- centred: level means ``m_j ~ MvNormal(c, Sigma)`` (Cholesky ``diag(s) L``) and
  ``b_j = m_j - c``, a shift with unit Jacobian; ``c`` holds the common terms the block's
  terms deviate from (``Intercept``, ``x``) for the block ``parameterization`` centres on
  the intercept, else 0 (hierarchical centring, as there).

Bambi builds the terms independent, non-centred ``b_tj = s_t z_tj`` or centred
``b_tj ~ Normal(0, s_t)``, as ``parameterization`` chose. ``correlate`` rewrites that PyMC
model at the graph level (as ``compiled`` and ``sufficient_statistics`` do): Bambi's ``z``
(``1|g_offset``) and ``s`` (``1|g_sigma``) stay sampled, ``L`` is added
(``1|g:x|g_corr_chol``), centred blocks sample ``1|g:x|g_means``; the deterministics
Bambi's code and ours read (``1|g``, ``x|g``) become the columns of ``b``, so the
sufficient-statistics likelihood reads them as before. Each correlation ``R_tu`` is a
scalar deterministic ``1|g:x|g_corr``.

Measured (2 cores, 4 chains x 1,000 + 1,000 draws): 60 groups x 20 rows, well identified:
centred, min bulk ESS 2,162 in 1.7 s (non-centred: 332 in 1.4 s; Bambi's independent
centred model: 810 in 0.6 s). Minnesota radon (85 counties, weakly identified slopes):
non-centred, 1.5 to 2.0 s (independent: 1.0 to 1.3 s), matching brms (tests).

Which terms share a block is read from the formula's parse (formulae), not from Bambi's
names: ``(1 | g) + (0 + x | g)`` are two parenthesised terms and stay independent, as in
lme4. Blocks whose terms are not one column each (a categorical expression, as in
``(1 + C(a) | g)``) stay independent, logged. Before changing a block, the rewrite checks
that Bambi's terms are ``offset * sigma`` (or ``Normal(0, sigma)``) at a random point;
otherwise the block is left independent (logged), never silently changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.model.fgraph import (
    ModelDeterministic,
    ModelFreeRV,
    fgraph_from_model,
    model_deterministic,
    model_free_rv,
    model_from_fgraph,
)
from pytensor.graph.fg import FunctionGraph
from pytensor.tensor.random.basic import NormalRV

from service.core.group_blocks import Block, blocks_of
from worker.modeling.sufficient_statistics import evaluate
from worker.patches import new_free_variable

log = logging.getLogger(__name__)

#: The LKJ shape when the request sets none (brms' default: uniform over correlations).
DEFAULT_ETA = 1.0
#: Relative disagreement with ``offset * sigma`` above which a block is left independent.
CHECK_TOLERANCE = 1e-12


@dataclass
class Correlations:
    """What a model estimates jointly, and what was asked but left independent (and why)."""

    blocks: list[Block] = field(default_factory=list)
    eta: dict[str, float] = field(default_factory=dict)  # by block name
    left_independent: dict[str, str] = field(default_factory=dict)  # block name -> reason
    #: a group term whose block, when Bambi built it centred, is centred on its common terms
    centre_on: str | None = None

    def eta_of(self, block: Block) -> float:
        return self.eta.get(block.name, DEFAULT_ETA)


def correlate(model: pm.Model, wanted: Correlations) -> tuple[pm.Model, Correlations]:
    """``model`` with every block of ``wanted`` estimated jointly (see the module
    docstring), and what was done: the blocks rewritten and those left independent."""
    if not wanted.blocks:
        return model, wanted
    graph, _ = fgraph_from_model(model, inlined_views=True)
    done = Correlations(
        eta=dict(wanted.eta),
        left_independent=dict(wanted.left_independent),
        centre_on=wanted.centre_on,
    )
    for block in wanted.blocks:
        reason = _rewrite(graph, block, done.eta_of(block), wanted.centre_on in block.terms)
        if reason is None:
            done.blocks.append(block)
        else:
            log.warning("group terms %s stay independent: %s", block.name, reason)
            done.left_independent[block.name] = reason
    if not done.blocks:
        return model, done
    return model_from_fgraph(graph, mutate_fgraph=True), done


def _rewrite(graph: FunctionGraph, block: Block, eta: float, centre: bool) -> str | None:
    """Rewrite one block in ``graph``; None when done, else why it was left alone."""
    nodes = {
        node.op.name: node
        for node in graph.apply_nodes
        if isinstance(node.op, ModelFreeRV | ModelDeterministic)
    }
    read = _read_block(block, nodes)
    if isinstance(read, str):
        return read
    effects, offsets, sds = read
    k = len(block.terms)
    chol = new_free_variable(pm.LKJCorr.dist(n=k, eta=float(eta)), block.chol_name)
    scale = pt.stack(sds)  # (k,)
    if offsets is not None:
        z = pt.stack(offsets, axis=1)  # (levels, k)
        # Row j of b is (diag(s) L z_j)'.
        b = pt.dot(z, chol.T) * scale[None, :]  # type: ignore[no-untyped-call]
    else:
        b = _centred(block, effects, nodes, scale[:, None] * chol, centre)
    for i, effect in enumerate(effects):
        column = model_deterministic(b[:, i], effect.op.name, *effect.op.dims)
        graph.replace(effect.outputs[0], column, import_missing=True)
    corr = pt.dot(chol, chol.T)  # type: ignore[no-untyped-call]
    for i, j, name in block.pairs():
        graph.add_output(model_deterministic(corr[i, j], name), import_missing=True)
    return None


def _read_block(
    block: Block, nodes: dict[str, Any]
) -> tuple[list[Any], list[Any] | None, list[Any]] | str:
    """Bambi's nodes of the block's terms (their effects, offsets and SDs; offsets None
    when Bambi built them centred), or why the block is not one this module rewrites."""
    effects, offsets, sds = [], [], []
    for term in block.terms:
        effect, offset, sd = (nodes.get(f"{term}{s}") for s in ("", "_offset", "_sigma"))
        if effect is None or sd is None:
            return f"'{term}' has no single SD"
        if effect.outputs[0].type.ndim != 1 or sd.outputs[0].type.ndim != 0:
            return f"'{term}' has more than one column"
        effects.append(effect)
        sds.append(sd.outputs[0])
        if offset is not None and isinstance(offset.op, ModelFreeRV):
            offsets.append(offset.outputs[0])
    if not offsets and all(isinstance(e.op, ModelFreeRV) for e in effects):
        if not _is_normal_with_sd(effects, sds):
            return "Bambi's centred group terms were not read as Normal(0, sigma)"
        return effects, None, sds
    if len(offsets) != len(effects) or not all(
        isinstance(e.op, ModelDeterministic) for e in effects
    ):
        return "its terms are not all sampled alike"
    if not _is_offset_times_sigma(effects, offsets, sds):
        return "Bambi's group terms were not read as offset times sigma"
    return effects, offsets, sds


def _centred(
    block: Block, effects: list[Any], nodes: dict[str, Any], chol_cov: Any, centre: bool
) -> Any:
    """The block sampled centred: level means ``m_j ~ MvNormal(c, Sigma)`` with
    ``b_j = m_j - c``, ``c`` the common terms the block's terms deviate from (``Intercept``
    for ``1|g``, ``x`` for ``x|g``) when ``centre``, else 0 (see ``parameterization``)."""
    parts = []
    for term in block.terms:
        node = nodes.get(_counterpart(term, block.prefix)) if centre else None
        common = node.outputs[0] if node is not None and isinstance(node.op, ModelFreeRV) else None
        parts.append(common if common is not None and common.type.ndim == 0 else pt.constant(0.0))
    centre_of = pt.stack(parts)  # (k,)
    size = effects[0].inputs[0].owner.inputs[1]  # Bambi's (levels,)
    means = pm.MvNormal.dist(mu=centre_of, chol=chol_cov, size=size)
    name = f"{block.name}_means"
    means.name = name
    value = means.type(name=name)
    levels = model_free_rv(means, value, None, name)
    return levels - centre_of[None, :]


def _counterpart(term: str, prefix: str) -> str:
    """The common term a group term deviates from: ``Intercept`` for ``1|g``, ``x`` for
    ``x|g``, ``sigma_Intercept`` for ``sigma_1|g``."""
    expression = term.removeprefix(prefix).split("|")[0]
    return prefix + ("Intercept" if expression == "1" else expression)


def _is_normal_with_sd(effects: list[Any], sds: list[Any]) -> bool:
    """Whether each of Bambi's centred terms is ``Normal(0, sigma)`` at a random sigma."""
    rng = np.random.default_rng(0)
    for effect, sd in zip(effects, sds, strict=True):
        rv = effect.inputs[0]
        if rv.owner is None or not isinstance(rv.owner.op, NormalRV):
            return False
        _, _, mu, scale = rv.owner.inputs
        s = float(rng.uniform(0.5, 2.0))
        try:
            centre = evaluate(mu, {sd: np.asarray(s)})
            spread = evaluate(scale, {sd: np.asarray(s)})
        except Exception:
            log.warning("a centred group term could not be evaluated", exc_info=True)
            return False
        if np.abs(centre).max(initial=0.0) > 0 or np.abs(spread - s).max(initial=0.0) > 1e-12:
            return False
    return True


def _is_offset_times_sigma(effects: list[Any], offsets: list[Any], sds: list[Any]) -> bool:
    """Whether each of Bambi's deterministics is ``offset * sigma`` at a random point."""
    rng = np.random.default_rng(0)
    for effect, offset, sd in zip(effects, offsets, sds, strict=True):
        levels = int(offset.type.shape[0]) if offset.type.shape[0] is not None else None
        z = rng.normal(size=levels if levels is not None else 3)
        s = float(rng.uniform(0.5, 2.0))
        try:
            theirs = evaluate(effect.inputs[0], {offset: z, sd: np.asarray(s)})
        except Exception:
            log.warning("a group term could not be evaluated", exc_info=True)
            return False
        if theirs.shape != z.shape or np.abs(theirs - z * s).max() > CHECK_TOLERANCE * (
            1 + np.abs(z * s).max()
        ):
            return False
    return True


def requested(
    formula: str, distributional: Mapping[str, str], eta: Mapping[str, float]
) -> Correlations:
    """The blocks a spec's formulas ask for (main formula and distributional ones)."""
    blocks = blocks_of(formula)
    for parameter, rhs in distributional.items():
        blocks += blocks_of(f"{parameter} ~ {rhs}", prefix=f"{parameter}_")
    return Correlations(blocks=blocks, eta=dict(eta))
