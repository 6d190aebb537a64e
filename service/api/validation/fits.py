"""A fit request, checked completely and normalised into the spec the worker will run.

The checks run in this order: the request's text is valid Unicode (a lone surrogate cannot
be stored), the data's shape, every formula (``formulas``), the column names the model uses
(``service.core.formula.check_names``), what is declared categorical, the values, the
response for the family, the size of the design Bambi would build (``design``), the values
of every transform (``transforms``), the priors (``priors``) and the sampler (``sampler``).
Only the rows complete in the columns the model uses are kept.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from service.api.validation.data import check_values, to_columns
from service.api.validation.design import check_design
from service.api.validation.formulas import CheckedFormula, check_formulas
from service.api.validation.priors import check_priors
from service.api.validation.sampler import resolve_sampler
from service.api.validation.text import check_data_text, check_request_text
from service.api.validation.transforms import check_transforms
from service.core.errors import InvalidRequest
from service.core.families import Family, check_link, check_response, check_trials, family
from service.core.formula import FormulaInfo, check_names
from service.core.group_blocks import blocks_of
from service.core.schemas import FitRequest, FitSpec, PriorSpec, Scalar
from service.core.settings import Settings
from service.core.webhooks import RefusedTarget, check_url


def validate_fit_request(request: FitRequest, settings: Settings) -> tuple[FitSpec, FormulaInfo]:
    """Check a fit request completely and return the normalised spec the worker will run."""
    check_request_text(request)
    if request.notify_url is not None:
        _check_notify_url(request.notify_url, settings)
    fam = family(request.family)
    link = check_link(fam, request.link)
    columns = to_columns(request.data, max_rows=settings.max_rows, max_columns=settings.max_columns)
    formulas = check_formulas(request, fam, columns, settings)
    info = formulas[0].info
    used = set(info.variables).union(*(f.info.predictors for f in formulas[1:]))
    check_names(used, distributional=request.distributional)
    _check_categorical(request.categorical, columns, used, fam, info)
    check_values(columns, used, "data", allow_missing=request.na_action == "drop")
    check_data_text(columns, used)
    rows = _complete_rows(columns, used)
    if not rows:
        raise InvalidRequest.one("data", "no row is complete in the columns the model uses")
    kept = {c: [columns[c][i] for i in rows] for c in sorted(used)}
    ordered = isinstance(request.categorical.get(info.response), list)
    check_response(fam, info.response, kept[info.response], ordered=ordered)
    if isinstance(info.trials, str):
        check_trials(kept[info.response], kept[info.trials], info.trials)
    check_design(formulas, kept, request.categorical, settings)
    for formula in formulas:
        nodes = [formula.info.response_transform, *formula.info.transforms]
        check_transforms([n for n in nodes if n is not None], kept, field=formula.field, rows=rows)
    auxiliary = [a for a in fam.auxiliary if a not in request.distributional]
    terms = [name for formula in formulas for name in formula.term_names]
    lkj = _correlation_prior_keys(formulas) if request.group_correlations == "estimate" else set()
    _check_correlation_priors(request.priors, lkj)
    others = {name: prior for name, prior in request.priors.items() if name not in lkj}
    check_priors(others, terms=terms, auxiliary=auxiliary)
    _check_prior_defaults(request, fam)
    spec = FitSpec(
        formula=request.formula,
        family=fam.name,
        link=link,
        priors=request.priors,
        distributional=request.distributional,
        categorical=request.categorical,
        columns=kept,
        n_dropped=len(next(iter(columns.values()))) - len(rows),
        dropped_rows=sorted(set(range(len(next(iter(columns.values()))))) - set(rows)),
        sampler=resolve_sampler(request, settings),
        name=request.name,
        group_correlations=request.group_correlations,
        prior_defaults=request.prior_defaults,
    )
    return spec, info


#: The families whose defaults rstanarm's stan_glmer defines (see ``FitRequest``).
RSTANARM_FAMILIES = ("gaussian", "bernoulli", "binomial", "poisson", "negativebinomial", "gamma")


def _check_prior_defaults(request: FitRequest, fam: Family) -> None:
    """rstanarm's defaults exist for stan_glmer's families, without distributional formulas."""
    if request.prior_defaults != "rstanarm":
        return
    if fam.name not in RSTANARM_FAMILIES:
        raise InvalidRequest.one(
            "prior_defaults",
            f"rstanarm has no defaults for the {fam.name} family; it has them for "
            f"{', '.join(RSTANARM_FAMILIES)} (use 'bambi', or set every prior)",
        )
    if request.distributional:
        raise InvalidRequest.one(
            "prior_defaults",
            "rstanarm's stan_glmer has no distributional formulas: use 'bambi' with them",
        )


def _correlation_prior_keys(formulas: Sequence[CheckedFormula]) -> set[str]:
    """The prior key of every correlated block, ``1|g:x|g_corr`` for ``(1 + x | g)``."""
    return {b.prior_key for f in formulas for b in blocks_of(f.text, f.prefix)}


def _check_correlation_priors(priors: Mapping[str, PriorSpec], keys: Collection[str]) -> None:
    """A correlated block's prior is ``{"dist": "LKJCorr", "params": {"eta": > 0}}``."""
    for name in keys:
        prior = priors.get(name)
        if prior is None:
            continue
        eta = prior.params.get("eta")
        if prior.dist != "LKJCorr" or set(prior.params) != {"eta"} or isinstance(eta, PriorSpec):
            raise InvalidRequest.one(
                f"priors.{name}",
                "a correlation takes an LKJ prior: {'dist': 'LKJCorr', 'params': {'eta': 1}}",
            )
        if not (eta is not None and eta > 0):
            raise InvalidRequest.one(f"priors.{name}.eta", "must be greater than 0")


def _check_notify_url(url: str, settings: Settings) -> None:
    """The URL may be notified (``service.core.webhooks``; names are resolved only when a
    notification is sent)."""
    try:
        check_url(url, settings)
    except RefusedTarget as exc:
        raise InvalidRequest.one("notify_url", str(exc)) from exc


def _complete_rows(columns: Mapping[str, Sequence[Scalar]], used: Collection[str]) -> list[int]:
    n = len(next(iter(columns.values())))
    return [i for i in range(n) if all(columns[c][i] is not None for c in used)]


def _check_categorical(
    categorical: Mapping[str, list[Scalar] | None],
    columns: Mapping[str, Sequence[Scalar]],
    used: set[str],
    fam: Family,
    info: FormulaInfo,
) -> None:
    for name, levels in categorical.items():
        field = f"categorical.{name}"
        if name not in used:
            raise InvalidRequest.one(field, f"'{name[:60]}' is not a column the model uses")
        if name == info.response and fam.response != "ordinal":
            raise InvalidRequest.one(
                field,
                f"the response of a {fam.name} model cannot be categorical; only the "
                "cumulative family takes ordered categories",
            )
        if name == info.trials:
            raise InvalidRequest.one(field, "binomial trials are counts, not categories")
        if levels is None:
            continue
        if len(set(levels)) != len(levels):
            raise InvalidRequest.one(field, "levels must be distinct")
        unknown = {v for v in columns[name] if v is not None} - set(levels)
        if unknown:
            raise InvalidRequest.one(
                field, f"{len(unknown)} values of the column are not among the listed levels"
            )
