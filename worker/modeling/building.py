"""Build a Bambi model from a validated spec (never from a pickle)."""

from __future__ import annotations

import logging
from typing import Any

import bambi as bmb
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
from scipy import sparse

from service.core.errors import FitFailed
from service.core.formula import check_formula
from service.core.schemas import FitSpec, PriorSpec, Scalar
from worker.modeling.correlated import Correlations, correlate, requested
from worker.modeling.rstanarm_priors import DecovBlock, decov, decov_blocks, default_priors
from worker.patches import in_a_clean_frame, one_byte_indicators

log = logging.getLogger(__name__)

#: Functions the allow-listed formula calls resolve to, beyond Bambi's own namespace.
EXTRA_NAMESPACE = {"sqrt": np.sqrt}


def frame(columns: dict[str, list[Scalar]], spec: FitSpec | None = None) -> pd.DataFrame:
    """The data as a DataFrame; columns the spec declares categorical become categoricals."""
    data = pd.DataFrame(columns)
    for name, levels in (spec.categorical if spec else {}).items():
        if name not in data:
            continue
        if levels is None:
            data[name] = pd.Categorical(data[name])
        else:
            data[name] = pd.Categorical(data[name], categories=levels, ordered=True)
    if spec is not None and spec.family == "cumulative":
        response = check_formula(spec.formula, spec.columns).response
        if response in data and not isinstance(data[response].dtype, pd.CategoricalDtype):
            data[response] = pd.Categorical(data[response], ordered=True)
    return data


def bambi_prior(spec: PriorSpec) -> bmb.Prior:
    """A Bambi prior from an allow-listed spec (``Constant`` fixes a hyperparameter)."""
    if spec.dist == "Constant":
        value = float(spec.params["value"])  # type: ignore[arg-type]

        def constant(label: str, *args: Any, **kwargs: Any) -> Any:
            return pm.Deterministic(label, pt.constant(value))

        return bmb.Prior("Constant", dist=constant, value=value)
    params = {
        key: bambi_prior(value) if isinstance(value, PriorSpec) else value
        for key, value in spec.params.items()
    }
    return bmb.Prior(spec.dist, **params)


class CorrelatedModel(bmb.Model):  # type: ignore[misc]  # bambi is untyped
    """Bambi's model whose PyMC model, once built, estimates the correlations of
    ``wanted_correlations`` (see ``correlated``); ``correlations`` says what it does."""

    wanted_correlations = Correlations()
    correlations = Correlations()
    #: rstanarm's decov prior on the group SDs (``prior_defaults: "rstanarm"``): the spec's
    #: family and the terms whose prior the request sets; None for Bambi's defaults.
    rstanarm: tuple[str, frozenset[str]] | None = None
    decov: tuple[DecovBlock, ...] = ()

    def build(self) -> None:
        super().build()
        self.backend.model, self.correlations = correlate(
            self.backend.model, self.wanted_correlations
        )
        if self.rstanarm is not None:
            family, requested = self.rstanarm
            correlated = [(b.name, tuple(b.terms)) for b in self.correlations.blocks]
            blocks = decov_blocks(self, family, correlated, requested)
            self.backend.model, done = decov(self.backend.model, blocks)
            self.decov = tuple(done)


def correlations_of(model: bmb.Model) -> Correlations:
    """The correlation blocks of ``model``: those its PyMC model estimates once built,
    those its spec asks for before (a block can be left independent, see ``correlated``)."""
    if not isinstance(model, CorrelatedModel):
        return Correlations()
    return model.correlations if model.built else model.wanted_correlations


def wanted_correlations(spec: FitSpec) -> Correlations:
    """The blocks of ``spec``'s formulas to estimate jointly, with their LKJ ``eta``."""
    if spec.group_correlations != "estimate":
        return Correlations()
    wanted = requested(spec.formula, spec.distributional, {})
    eta = {
        block.name: float(spec.priors[block.prior_key].params["eta"])  # type: ignore[arg-type]
        for block in wanted.blocks
        if block.prior_key in spec.priors
    }
    return Correlations(blocks=wanted.blocks, eta=eta)


def build_model(spec: FitSpec) -> bmb.Model:
    """A Bambi model for ``spec``. Every formula is checked again before Bambi sees it."""
    check_formula(spec.formula, spec.columns, max_length=len(spec.formula))
    extra = []
    for parameter, rhs in spec.distributional.items():
        formula = f"{parameter} ~ {rhs}"
        check_formula(formula, spec.columns, max_length=len(formula), parameter=parameter)
        extra.append(formula)
    wanted = wanted_correlations(spec)
    lkj_keys = {block.prior_key for block in wanted.blocks}
    try:
        with one_byte_indicators():
            model = in_a_clean_frame(
                CorrelatedModel,
                bmb.Formula(spec.formula, *extra),
                frame(spec.columns, spec),
                family=spec.family,
                link=spec.link,
                priors={
                    term: bambi_prior(prior)
                    for term, prior in spec.priors.items()
                    if term not in lkj_keys
                },
                noncentered=spec.sampler.parameterization != "centered",
                extra_namespace=EXTRA_NAMESPACE,
            )
    except Exception as exc:
        log.info("model build failed", exc_info=True)
        raise FitFailed(
            "model_error", "the model could not be built from this formula and data"
        ) from exc
    model.wanted_correlations = one_column_blocks(model, wanted)
    if spec.prior_defaults == "rstanarm":
        model.set_priors(priors=default_priors(model, spec.family, spec.priors))
        model.rstanarm = (spec.family, frozenset(spec.priors))
    release_group_indicators(model)
    return model


def one_column_blocks(model: bmb.Model, wanted: Correlations) -> Correlations:
    """``wanted`` without the blocks that hold a term of several columns (a categorical
    expression, as in ``(1 + C(a) | g)``): those stay independent (see ``correlated``)."""
    terms = {
        name: term
        for component in model.parameters.values()
        for name, term in getattr(component, "group_specific_terms", {}).items()
    }
    kept = Correlations(eta=wanted.eta, left_independent=dict(wanted.left_independent))
    for block in wanted.blocks:
        wide = [
            name
            for name in block.terms
            if name not in terms or np.asarray(terms[name].predictor).ndim != 1
        ]
        if wide:
            reason = f"'{wide[0]}' has more than one column"
            log.info("group terms %s stay independent: %s", block.name, reason)
            kept.left_independent[block.name] = reason
        else:
            kept.blocks.append(block)
    return kept


def release_group_indicators(model: bmb.Model) -> None:
    """Keep the level indicators of every grouping factor as a sparse matrix.

    formulae encodes a grouping factor as a dense rows x levels matrix. Bambi reads
    it once, to turn it into a vector of level indices (``group_index``), and nothing reads
    it again: new data is encoded afresh from the factor's levels. With 100,000 rows in
    1,000 groups it is 800 MB, more than the rest of a fit needs.
    """
    for component in model.components.values():
        for term in getattr(component, "group_specific_terms", {}).values():
            factor = term.term.factor
            for part in [factor, *factor.components]:
                for attribute in ("data", "value"):
                    value = getattr(part, attribute, None)
                    if isinstance(value, np.ndarray) and value.ndim == 2:
                        setattr(part, attribute, as_sparse(value))


def as_sparse(dense: np.ndarray) -> sparse.csr_matrix:
    """``dense`` as a CSR matrix; indicator-like matrices (at most one entry per row) are
    read with an argmax per row, several times faster than scipy's general scan."""
    present = dense != 0
    per_row = present.sum(axis=1)
    if per_row.max(initial=0) > 1:
        return sparse.csr_matrix(dense)
    rows = np.flatnonzero(per_row)
    columns = present.argmax(axis=1)[rows]
    return sparse.csr_matrix((dense[rows, columns], (rows, columns)), shape=dense.shape)
