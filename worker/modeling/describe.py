"""What a model is, without sampling: its terms, groups, parameter count and priors."""

from __future__ import annotations

from typing import Any

import bambi as bmb
import numpy as np
from pymc.distributions.multivariate import LKJCorrRV

from service.core.schemas import GroupInfo, ModelDescription, PriorUsed
from worker.modeling.building import correlations_of
from worker.modeling.rstanarm_priors import decov_prior
from worker.modeling.summaries import group_terms


def _value(value: Any) -> Any:
    if isinstance(value, bmb.Prior):
        return prior_dict(value)
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return type(value).__name__  # e.g. the Ordered transform of ordinal thresholds
    return float(array) if array.ndim == 0 else array.tolist()


def prior_dict(prior: bmb.Prior) -> dict[str, Any]:
    """A Bambi prior as ``{"dist": ..., "params": {...}}`` (hyperpriors nested)."""
    return {"dist": prior.name, "params": {k: _value(v) for k, v in prior.args.items()}}


def priors_used(model: bmb.Model) -> list[PriorUsed]:
    """Every prior the model uses, defaults included (as brms' ``prior_summary``)."""
    rows: list[PriorUsed] = []
    decov = {term: block for block in getattr(model, "decov", []) for term in block.terms}
    for component in model.conditional_parameters.values():
        for term in component.terms.values():
            if not isinstance(term.prior, bmb.Prior):
                continue  # an offset: a fixed column, no parameter
            kind = "group" if "|" in term.name else "common"
            if term.name in decov:  # rstanarm's decov replaced Bambi's SD prior
                rows.append(PriorUsed(term=term.name, kind=kind, **decov_prior(decov[term.name])))
                continue
            rows.append(PriorUsed(term=term.name, kind=kind, **prior_dict(term.prior)))
    wanted = correlations_of(model)
    for block in wanted.blocks:  # the LKJ prior of each correlated block (see correlated)
        params = {"eta": wanted.eta_of(block)}
        rows.append(PriorUsed(term=block.prior_key, kind="group", dist="LKJCorr", params=params))
    for name, component in model.marginal_parameters.items():
        rows.append(PriorUsed(term=name, kind="auxiliary", **prior_dict(component.prior)))
    return rows


def _free_size(rv: Any) -> int:
    """How many scalars the sampler moves for ``rv``: a k x k LKJ Cholesky factor of a
    correlation matrix has k (k - 1) / 2 (see ``correlated``)."""
    shape = [int(n) for n in rv.shape.eval()]
    if isinstance(rv.owner.op, LKJCorrRV):
        k = shape[-1]
        return int(np.prod(shape[:-2])) * k * (k - 1) // 2
    return int(np.prod(shape))


def describe(model: bmb.Model, n_dropped: int = 0) -> ModelDescription:
    """The dry run's answer: terms, grouping factors with level counts, parameters, priors."""
    model.build()
    n_parameters = sum(_free_size(rv) for rv in model.backend.model.free_RVs)
    groups = [
        GroupInfo(factor=factor, levels=len(terms[0].groups), terms=[t.name for t in terms])
        for factor, terms in group_terms(model).items()
    ]
    return ModelDescription(
        formula=str(model.formula.main),
        family=model.family.name,
        n_obs=len(model.data),
        n_dropped=n_dropped,
        n_parameters=n_parameters,
        groups=groups,
        priors=priors_used(model),
    )
