"""rstanarm's default priors (``prior_defaults: "rstanarm"``): what ``stan_glmer`` uses
when a user sets none, so that a model moved from R gets the same posterior.

With ``s_y = sd(y)`` for gaussian and 1 otherwise (R's ``sd``, n - 1), as rstanarm 2.x's
``stan_glm.fit`` and ``decov`` compute them:

- each coefficient column ``x_k`` (a dummy of a categorical included):
  ``normal(0, 2.5 s_y / sd(x_k))`` (``sd(x_k)`` taken as 1 for a constant column);
- the intercept of centred predictors (Bambi centres them too, so its ``Intercept`` prior
  is on the same quantity): ``normal(mean(y), 2.5 s_y)`` for gaussian, ``normal(0, 2.5)``;
- gaussian ``sigma ~ exponential(1 / sd(y))``; the dispersion of negative binomial and gamma
  (Bambi's ``alpha``, rstanarm's ``reciprocal_dispersion`` and ``shape``) ``exponential(1)``;
- group-level covariances ``decov(regularization = 1, concentration = 1, shape = 1,
  scale = 1)``: for a block of ``p`` terms on one factor,

      tau ~ Gamma(1, 1),   pi ~ Dirichlet(1, ..., 1),   R ~ LKJ(1),
      sd_k = d * tau * sqrt(p * pi_k)

  with ``d = sigma`` for gaussian (rstanarm scales the covariance by the residual variance)
  and 1 otherwise. A single term (``p = 1``) has ``sd = d * tau``.

Bambi's priors cannot refer to another parameter, so the group SDs are rewritten in the
PyMC graph after Bambi built it (``decov``), as ``correlated`` rewrites blocks: each
term's ``{term}_sigma`` becomes the deterministic above, computed from new free variables
``{block}_tau`` and ``{block}_simplex``. A term whose SD the request sets keeps that prior.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bambi as bmb
import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.model.fgraph import (
    ModelFreeRV,
    fgraph_from_model,
    model_deterministic,
    model_from_fgraph,
)
from pytensor.graph.fg import FunctionGraph

from worker.patches import new_free_variable

log = logging.getLogger(__name__)

#: rstanarm's scale of the normal priors on coefficients and the intercept.
SCALE = 2.5
#: rstanarm's floor on an autoscaled prior scale.
MIN_SCALE = 1e-12
#: Bambi's name of each family's dispersion that rstanarm gives ``exponential(1)``.
DISPERSION = {"negativebinomial": "alpha", "gamma": "alpha"}


@dataclass(frozen=True)
class DecovBlock:
    """Group terms on one factor whose SDs share one decov prior."""

    name: str
    terms: tuple[str, ...]
    scaled_by_sigma: bool

    @property
    def tau_name(self) -> str:
        return f"{self.name}_tau"

    @property
    def simplex_name(self) -> str:
        return f"{self.name}_simplex"


def decov_prior(block: DecovBlock) -> dict[str, Any]:
    """How ``GET /priors`` and the dry run list a decov block's prior (rstanarm's words)."""
    params: dict[str, Any] = {"regularization": 1.0, "concentration": 1.0, "shape": 1.0}
    params |= {"scale": 1.0, "block": list(block.terms)}
    if block.scaled_by_sigma:
        params["scaled_by"] = "sigma"
    return {"dist": "decov", "params": params}


def _sd(values: np.ndarray) -> float:
    """R's ``sd`` (n - 1), 1 for a constant column, as rstanarm's autoscaling."""
    values = np.asarray(values, dtype=float)
    if np.unique(values).size < 2:
        return 1.0
    return float(np.std(values, ddof=1))


def default_priors(model: bmb.Model, family: str, requested: Mapping[str, Any]) -> dict[str, Any]:
    """rstanarm's priors for the terms of ``model``'s main formula the request left unset."""
    y = np.asarray(model.response_term.data, dtype=float)
    gaussian = family == "gaussian"
    s_y = _sd(y) if gaussian else 1.0
    priors: dict[str, Any] = {}
    component = model.parameters[model.family.likelihood.parent]
    if component.intercept_term is not None:
        location = float(np.mean(y)) if gaussian else 0.0
        priors["Intercept"] = bmb.Prior("Normal", mu=location, sigma=SCALE * s_y)
    for name, term in component.common_terms.items():
        columns = np.asarray(term.data, dtype=float)
        columns = columns.reshape(len(columns), -1)
        scales = [max(MIN_SCALE, SCALE * s_y / _sd(columns[:, k])) for k in range(columns.shape[1])]
        sigma = scales[0] if len(scales) == 1 else np.asarray(scales)
        priors[name] = bmb.Prior("Normal", mu=0.0, sigma=sigma)
    if gaussian:
        priors["sigma"] = bmb.Prior("Exponential", lam=1.0 / s_y)
    elif family in DISPERSION:
        priors[DISPERSION[family]] = bmb.Prior("Exponential", lam=1.0)
    return {name: prior for name, prior in priors.items() if name not in requested}


def decov_blocks(
    model: bmb.Model, family: str, correlated: list[tuple[str, tuple[str, ...]]], requested: Any
) -> list[DecovBlock]:
    """The decov blocks of ``model``: each correlated block (name, terms), and every other
    group term of the main formula on its own; terms whose prior the request sets are
    left out (they keep it)."""
    component = model.parameters[model.family.likelihood.parent]
    gaussian = family == "gaussian"
    blocks: list[DecovBlock] = []
    in_blocks: set[str] = set()
    for name, terms in correlated:
        in_blocks.update(terms)
        free = tuple(t for t in terms if t not in requested and t in component.group_specific_terms)
        if len(free) == len(terms):
            blocks.append(DecovBlock(name, terms, gaussian))
        else:
            blocks += [DecovBlock(t, (t,), gaussian) for t in free]
    for term in component.group_specific_terms:
        if term not in in_blocks and term not in requested:
            blocks.append(DecovBlock(term, (term,), gaussian))
    return blocks


def decov(model: pm.Model, blocks: list[DecovBlock]) -> tuple[pm.Model, list[DecovBlock]]:
    """``model`` with the SDs of ``blocks`` given rstanarm's decov prior (see the module
    docstring), and the blocks done (a block whose SDs are not scalars is left, logged)."""
    if not blocks:
        return model, []
    graph, _ = fgraph_from_model(model, inlined_views=True)
    nodes = {node.op.name: node for node in graph.apply_nodes if isinstance(node.op, ModelFreeRV)}
    done = []
    for block in blocks:
        reason = _rewrite(graph, block, nodes)
        if reason is None:
            done.append(block)
        else:
            log.warning("group SDs of %s keep Bambi's prior: %s", block.name, reason)
    if not done:
        return model, done
    return model_from_fgraph(graph, mutate_fgraph=True), done


def _rewrite(graph: FunctionGraph, block: DecovBlock, nodes: Mapping[str, Any]) -> str | None:
    """Rewrite one block's SDs in ``graph``; None when done, else why it was left."""
    sds = [nodes.get(f"{term}_sigma") for term in block.terms]
    if any(sd is None or sd.outputs[0].type.ndim != 0 for sd in sds):
        return "its SDs are not one scalar per term"
    dispersion: Any = pt.constant(1.0)
    if block.scaled_by_sigma:
        sigma = nodes.get("sigma")
        if sigma is None or sigma.outputs[0].type.ndim != 0:
            return "the model has no scalar sigma to scale them by"
        dispersion = sigma.outputs[0]
    tau = new_free_variable(pm.Gamma.dist(alpha=1.0, beta=1.0), block.tau_name)
    p = len(block.terms)
    if p == 1:
        shares: Any = pt.ones(1)
    else:
        simplex = new_free_variable(pm.Dirichlet.dist(a=np.ones(p)), block.simplex_name)
        shares = p * simplex
    for k, sd in enumerate(sds):
        assert sd is not None
        value = dispersion * tau * pt.sqrt(shares[k])
        graph.replace(sd.outputs[0], model_deterministic(value, sd.op.name), import_missing=True)
    return None
