"""A gaussian likelihood from sufficient statistics: each gradient costs O(levels), not O(rows).

For a gaussian model with identity link, a scalar sigma and group terms on one grouping
factor, Bambi's linear predictor for row ``i`` in level ``l`` is

    mu_i = offset_i + a_i . theta + z_i . u_l

where ``theta`` holds the intercept and the common coefficients (``a_i`` their design row,
centred as Bambi centres it) and ``u_l`` the group effects of level ``l`` (``z_i`` their
predictors). The sum of squares ``sum_i (y_i - mu_i)^2`` is then a quadratic form in
``theta`` and the ``u_l`` whose coefficients are sums over rows, computed once per fit:

    SS = r.r - 2 d.(A'r) - 2 sum_l u_l.(Z_l'r) + d'(A'A)d + 2 sum_l d'(A_l'Z_l)u_l
         + sum_l u_l'(Z_l'Z_l)u_l,        d = theta - theta0,  r = y - offset - A theta0

with ``theta0`` the least-squares fit of the common terms, so every sum is on the scale of
the residuals (no cancellation between large numbers). The log-likelihood

    -n/2 log(2 pi) - n log(sigma) - SS / (2 sigma^2)

equals Bambi's row-wise one exactly (up to rounding): same model, same posterior. The
gradient of a model with 100,000 rows in 1,000 groups then costs about as much as one with
1,000 rows. Correlated group terms (``correlated``) change only the prior of the ``u_l``;
the likelihood reads the same deterministics (``1|g``, ``x|g``) and collapses alike.

``collapse`` replaces the observed response in the model's graph by this likelihood, as a
potential, and drops the per-row deterministics. It checks its own reading of the linear
predictor against Bambi's graph at a random point before it changes anything, and leaves
models it does not recognise (other families, distributional sigma, weights, censoring,
crossed or nested factors, smooth terms) as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import bambi as bmb
import numpy as np
import pytensor.tensor as pt
from pymc.model.fgraph import (
    ModelDeterministic,
    ModelFreeRV,
    ModelObservedRV,
    ModelVar,
    model_potential,
)
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.traversal import toposort
from pytensor.tensor.random.basic import NormalRV
from pytensor.tensor.variable import TensorConstant

log = logging.getLogger(__name__)
Tensor = Any  # a symbolic pytensor tensor (pytensor's own annotations are partial)

#: The name of the potential that stands for the response's likelihood.
POTENTIAL_NAME = "hbm_gaussian_loglik"
#: Relative disagreement with Bambi's linear predictor above which nothing is collapsed.
CHECK_TOLERANCE = 1e-9


@dataclass
class LinearPredictor:
    """Bambi's linear predictor as data: ``offset + common @ theta + (group * u[level]).sum(1)``."""

    offset: np.ndarray  # (n,)
    common: np.ndarray  # (n, q): the intercept column and the (centred) common predictors
    common_names: list[str]  # the model variables that make up theta, in order
    common_widths: list[int]  # how many entries of theta each one holds
    level: np.ndarray  # (n,) level index of each row (zeros without group terms)
    levels: int
    group: np.ndarray  # (n, e): the predictors of the group terms
    group_names: list[str]  # the model variables (levels, ...) that make up u, in order
    group_widths: list[int]  # how many columns of u each one holds


@dataclass
class SufficientStatistics:
    """The sums the quadratic form needs; every shape is fixed by the model's structure."""

    n: float
    rr: float
    theta0: np.ndarray  # (q,)
    ar: np.ndarray  # (q,)    A'r
    aa: np.ndarray  # (q, q)  A'A
    zr: np.ndarray  # (L, e)  Z_l'r
    az: np.ndarray  # (L, q, e)  A_l'Z_l
    zz: np.ndarray  # (L, e, e)  Z_l'Z_l


def linear_predictor(model: bmb.Model) -> LinearPredictor | str:
    """The linear predictor of ``model``'s mean, or why it is not one this module handles."""
    if model.family.name != "gaussian" or model.family.link["mu"].name != "identity":
        return "not a gaussian model with identity link"
    component = model.parameters[model.family.likelihood.parent]
    if getattr(component, "hsgp_terms", None):
        return "smooth (HSGP) terms"
    n = len(model.data)
    columns, names, widths = [], [], []
    if component.intercept_term is not None:
        columns.append(np.ones((n, 1)))
        names.append(_label(component.intercept_term))
        widths.append(1)
    if component.common_terms:
        common = list(component.common_terms.values())
        parts = [np.asarray(t.data, dtype=float).reshape(n, -1) for t in common]
        data = np.hstack(parts)
        if component.intercept_term is not None and model.center_predictors:
            data = data - data.mean(0)
        columns.append(data)
        names.extend(_label(term) for term in common)
        widths.extend(part.shape[1] for part in parts)
    offset = np.zeros(n)
    for term in component.offset_terms.values():
        offset = offset + np.asarray(term.data, dtype=float).reshape(n)
    terms = list(component.group_specific_terms.values())
    level = np.zeros(n, dtype=np.int64)
    levels = 0
    if terms:
        level = np.asarray(terms[0].group_index, dtype=np.int64)
        levels = len(terms[0].groups)
        for term in terms[1:]:
            if len(term.groups) != levels or not np.array_equal(term.group_index, level):
                return "group terms on more than one grouping factor"
    group = [np.asarray(t.predictor, dtype=float).reshape(n, -1) for t in terms]
    return LinearPredictor(
        offset=offset,
        common=np.hstack(columns) if columns else np.zeros((n, 0)),
        common_names=names,
        common_widths=widths,
        level=level,
        levels=levels,
        group=np.hstack(group) if group else np.zeros((n, 0)),
        group_names=[_label(t) for t in terms],
        group_widths=[g.shape[1] for g in group],
    )


def statistics(y: np.ndarray, predictor: LinearPredictor) -> SufficientStatistics:
    """The sums over rows that the likelihood needs, around the common terms' LS fit."""
    a, z, level, levels = predictor.common, predictor.group, predictor.level, predictor.levels
    target = y - predictor.offset
    theta0 = np.linalg.lstsq(a, target, rcond=None)[0] if a.shape[1] else np.zeros(0)
    r = target - a @ theta0

    def per_level(weights: np.ndarray) -> np.ndarray:
        return np.bincount(level, weights=weights, minlength=levels).astype(float)

    q, e = a.shape[1], z.shape[1]
    zr = np.zeros((levels, e))
    for j in range(e):
        zr[:, j] = per_level(z[:, j] * r)
    az = np.zeros((levels, q, e))
    for i in range(q):
        for j in range(e):
            az[:, i, j] = per_level(a[:, i] * z[:, j])
    zz = np.zeros((levels, e, e))
    for i in range(e):
        for j in range(i, e):
            zz[:, i, j] = zz[:, j, i] = per_level(z[:, i] * z[:, j])
    return SufficientStatistics(
        n=float(len(y)),
        rr=float(r @ r),
        theta0=theta0,
        ar=a.T @ r,
        aa=a.T @ a,
        zr=zr,
        az=az,
        zz=zz,
    )


def log_likelihood(
    stats: SufficientStatistics,
    theta: Tensor | None,
    u: Tensor | None,
    sigma: Tensor,
) -> Tensor:
    """The gaussian log-likelihood as a graph in ``theta`` (q,), ``u`` (L, e) and sigma."""
    ss: Any = pt.constant(stats.rr)
    if theta is not None:
        d = theta - pt.constant(stats.theta0)
        ss = ss - 2 * d.dot(pt.constant(stats.ar))
        ss = ss + d.dot(pt.constant(stats.aa).dot(d))  # type: ignore[no-untyped-call]
    if u is not None:
        ss = ss - 2 * (u * pt.constant(stats.zr)).sum()
        ss = ss + (u * (pt.constant(stats.zz) * u[:, None, :]).sum(axis=-1)).sum()
        if theta is not None:
            cross = (pt.constant(stats.az) * d[None, :, None]).sum(axis=1)  # (L, e)
            ss = ss + 2 * (cross * u).sum()
    n = pt.constant(stats.n)
    return -0.5 * n * np.log(2 * np.pi) - n * pt.log(sigma) - ss / (2 * sigma**2)


def collapse(graph: FunctionGraph, model: bmb.Model) -> str | None:
    """Replace the row-wise gaussian likelihood in ``graph`` by its sufficient-statistics
    form; None when done, else the reason the graph was left as it is."""
    predictor = linear_predictor(model)
    if isinstance(predictor, str):
        return predictor
    observed = [node for node in graph.apply_nodes if isinstance(node.op, ModelObservedRV)]
    if len(observed) != 1:
        return "not one observed response"
    rv, value = observed[0].inputs
    plain = rv.owner is not None and type(rv.owner.op) is NormalRV
    if not plain or not isinstance(value, TensorConstant):
        return "the response is not a plain normal (weights, censoring or truncation)"
    _, _, mu, sigma = rv.owner.inputs
    if not all(sigma.type.broadcastable):
        return "sigma varies by row"
    named: dict[str, Tensor] = {
        node.op.name: node.outputs[0]
        for node in graph.apply_nodes
        if isinstance(node.op, ModelFreeRV | ModelDeterministic)
    }
    if any(name not in named for name in predictor.common_names + predictor.group_names):
        return "a coefficient of the linear predictor is not in the graph"
    # No reshapes: their shape constants would be taken for inputs by ``compiled.lift``.
    theta_parts = [_columns(named[name], 1) for name in predictor.common_names]
    theta = pt.concatenate(theta_parts) if theta_parts else None  # type: ignore[no-untyped-call]
    u_parts = [_columns(named[name], 2) for name in predictor.group_names]
    u = pt.concatenate(u_parts, axis=1) if u_parts else None  # type: ignore[no-untyped-call]
    if not _agrees(mu, predictor, named):
        log.warning("the linear predictor was not read as Bambi builds it; not collapsing")
        return "the linear predictor was not recognised"
    y = np.asarray(value.data, dtype=float).reshape(-1)
    loglik = log_likelihood(statistics(y, predictor), theta, u, pt.squeeze(sigma))  # type: ignore[no-untyped-call]
    graph.add_output(model_potential(loglik, POTENTIAL_NAME), import_missing=True)
    per_row = [
        i
        for i, out in enumerate(graph.outputs)
        if out.owner is not None
        and (
            out.owner is observed[0]
            or (isinstance(out.owner.op, ModelDeterministic) and "__obs__" in out.owner.op.dims)
        )
    ]
    for i in reversed(per_row):
        graph.remove_output(i)
    return None


def _agrees(mu: Tensor, predictor: LinearPredictor, variables: dict[str, Tensor]) -> bool:
    """Whether Bambi's ``mu`` and ours agree at a random value of every coefficient."""
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(predictor.common.shape[1],))
    u = rng.normal(size=(predictor.levels, predictor.group.shape[1]))
    values = {
        **_split(predictor.common_names, predictor.common_widths, theta),
        **_split(predictor.group_names, predictor.group_widths, u),
    }
    mine = predictor.offset + predictor.common @ theta
    if predictor.group_names:
        mine = mine + (predictor.group * u[predictor.level]).sum(axis=1)
    known = {
        variables[name]: value.reshape(value.shape[: variables[name].type.ndim])
        for name, value in values.items()
    }
    while mu.owner is not None and isinstance(mu.owner.op, ModelVar):  # Bambi's "mu"
        mu = mu.owner.inputs[0]
    try:
        theirs = np.asarray(evaluate(mu, known), dtype=float)
    except Exception:
        log.warning("Bambi's linear predictor could not be evaluated", exc_info=True)
        return False
    if theirs.shape not in (mine.shape, (1,)):  # an intercept-only mu broadcasts
        return False
    scale = float(np.abs(mine).max()) + 1.0
    return bool(np.abs(theirs - mine).max() <= CHECK_TOLERANCE * scale)


def evaluate(output: Tensor, known: dict[Tensor, np.ndarray]) -> np.ndarray:
    """``output``'s value given the values of some of its inputs, computed node by node
    with each op's own Python implementation, so that nothing is compiled or cached. (With
    a FAST_COMPILE function instead, five 100,000-row fits in one process left 535 to 1016
    MiB behind; with this, 531 to 839.)"""
    if isinstance(output, TensorConstant):
        return np.asarray(output.data)
    values: dict[Any, Any] = dict(known)
    for node in toposort([output], blockers=known):
        for var in node.inputs:
            if var not in values and isinstance(var, TensorConstant):
                values[var] = var.data
        inputs = [values[var] for var in node.inputs]
        storage: list[list[Any]] = [[None] for _ in node.outputs]
        node.op.perform(node, inputs, storage)
        values.update(zip(node.outputs, (cell[0] for cell in storage), strict=True))
    return np.asarray(values[output])


def _split(names: list[str], widths: list[int], values: np.ndarray) -> dict[str, np.ndarray]:
    """``values`` cut along its last axis into one block per name."""
    bounds = np.cumsum([0, *widths])
    blocks = zip(names, bounds[:-1], bounds[1:], strict=True)
    return {name: values[..., lo:hi] for name, lo, hi in blocks}


def _columns(var: Tensor, ndim: int) -> Tensor:
    """``var`` with a trailing axis added when it has one axis fewer than ``ndim``."""
    return var[..., None] if var.type.ndim == ndim - 1 else var


def _label(term: Any) -> str:
    return str(term.alias or term.name)
