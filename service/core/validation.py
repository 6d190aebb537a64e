"""Request validation beyond the schema: data shape, limits, formula, family and priors.

Everything here runs in the API before anything is queued, and the worker runs the formula
check again before Bambi sees the text. Each problem becomes an InvalidRequest that names the
field and what is wrong.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence

from service.core.errors import FieldError, InvalidRequest
from service.core.families import Family, check_link, check_response, check_trials, family
from service.core.formula import FormulaInfo, check_formula, term_names
from service.core.priors import check_priors
from service.core.schemas import (
    Columns,
    FitRequest,
    FitSpec,
    Records,
    ResolvedSampler,
    Scalar,
)
from service.core.settings import Settings


def to_columns(
    data: Records | Columns, *, max_rows: int, max_columns: int, field: str = "data"
) -> dict[str, list[Scalar]]:
    """Normalise records or columns into columns; refuse empty, ragged or oversized data."""
    if isinstance(data, list):
        columns = _records_to_columns(data, field)
    else:
        columns = {name: list(values) for name, values in data.items()}
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"'{name}' has {n}" for name, n in list(lengths.items())[:5])
            raise InvalidRequest.one(field, f"columns must have equal lengths: {detail}")
    if not columns or not next(iter(columns.values())):
        raise InvalidRequest.one(field, "the data has no rows")
    if len(columns) > max_columns:
        raise InvalidRequest.one(
            field, f"the data has {len(columns)} columns; the limit is {max_columns}"
        )
    n_rows = len(next(iter(columns.values())))
    if n_rows > max_rows:
        raise InvalidRequest.one(field, f"the data has {n_rows} rows; the limit is {max_rows}")
    for name in columns:
        if not name.strip():
            raise InvalidRequest.one(field, "a column has an empty name")
    return columns


def _records_to_columns(records: Records, field: str) -> dict[str, list[Scalar]]:
    if not records:
        raise InvalidRequest.one(field, "the data has no rows")
    names = list(records[0])
    expected = set(names)
    for index, record in enumerate(records):
        if set(record) != expected:
            missing = sorted(expected - set(record))
            extra = sorted(set(record) - expected)
            what = f"lacks {missing}" if missing else f"has extra fields {extra}"
            raise InvalidRequest.one(
                f"{field}[{index}]", f"every record needs the same fields; this one {what}"
            )
    return {name: [record[name] for record in records] for name in names}


def check_values(
    columns: Mapping[str, Sequence[Scalar]], used: set[str], field: str, *, allow_missing: bool
) -> None:
    """Refuse missing (unless allowed), non-finite or mixed-type values in used columns."""
    errors: list[FieldError] = []
    for name in sorted(used):
        values = columns[name]
        missing = sum(value is None for value in values)
        if missing and not allow_missing:
            errors.append(
                FieldError(
                    f"{field}.{name}",
                    f"{missing} missing values (send na_action 'drop' to drop those rows)",
                )
            )
        bad = sum(isinstance(v, float) and not math.isfinite(v) for v in values)
        if bad:
            errors.append(FieldError(f"{field}.{name}", f"{bad} values are not finite numbers"))
        huge = sum(isinstance(v, int) and abs(v) > 2**53 for v in values)
        if huge:
            errors.append(FieldError(f"{field}.{name}", f"{huge} values are too large"))
        kinds = {type(v) for v in values if v is not None}
        if str in kinds and kinds - {str}:
            errors.append(FieldError(f"{field}.{name}", "mixes text with numbers or booleans"))
        elif bool in kinds and kinds - {bool}:
            errors.append(FieldError(f"{field}.{name}", "mixes booleans with numbers"))
    if errors:
        raise InvalidRequest(errors)


def drop_incomplete(
    columns: dict[str, list[Scalar]], used: set[str]
) -> tuple[dict[str, list[Scalar]], int]:
    """The used columns without the rows that miss a value in any of them."""
    n = len(next(iter(columns.values())))
    keep = [i for i in range(n) if all(columns[c][i] is not None for c in used)]
    kept = {c: [columns[c][i] for i in keep] for c in sorted(used)}
    return kept, n - len(keep)


def validate_fit_request(request: FitRequest, settings: Settings) -> tuple[FitSpec, FormulaInfo]:
    """Check a fit request completely and return the normalised spec the worker will run."""
    fam = family(request.family)
    link = check_link(fam, request.link)
    columns = to_columns(request.data, max_rows=settings.max_rows, max_columns=settings.max_columns)
    info = check_formula(request.formula, columns, max_length=settings.max_formula_length)
    _check_binomial_form(fam, info)
    used = set(info.variables)
    infos = [info]
    terms = term_names(request.formula)
    for parameter, rhs in request.distributional.items():
        field = f"distributional.{parameter}"
        if parameter not in fam.auxiliary:
            raise InvalidRequest.one(
                field, f"{fam.name} has no auxiliary parameter '{parameter[:40]}'"
            )
        formula = f"{parameter} ~ {rhs}"
        extra = check_formula(
            formula,
            columns,
            max_length=settings.max_formula_length,
            field_name=field,
            parameter=parameter,
        )
        used |= extra.predictors
        infos.append(extra)
        terms += [f"{parameter}_{term}" for term in term_names(formula, field_name=field)]
    _check_groups(infos, columns, settings)
    _check_categorical(request.categorical, columns, used)
    check_values(columns, used, "data", allow_missing=request.na_action == "drop")
    kept, n_dropped = drop_incomplete(columns, used)
    if not next(iter(kept.values())):
        raise InvalidRequest.one("data", "no row is complete in the columns the model uses")
    ordered = isinstance(request.categorical.get(info.response), list)
    check_response(fam, info.response, kept[info.response], ordered=ordered)
    if isinstance(info.trials, str):
        check_trials(kept[info.response], kept[info.trials], info.trials)
    auxiliary = [a for a in fam.auxiliary if a not in request.distributional]
    check_priors(request.priors, terms=terms, auxiliary=auxiliary)
    spec = FitSpec(
        formula=request.formula,
        family=fam.name,
        link=link,
        priors=request.priors,
        distributional=request.distributional,
        categorical=request.categorical,
        columns=kept,
        n_dropped=n_dropped,
        sampler=_resolve_sampler(request, settings),
        name=request.name,
    )
    return spec, info


def _check_groups(
    infos: Sequence[FormulaInfo], columns: Mapping[str, Sequence[Scalar]], settings: Settings
) -> None:
    """Limits on grouping factors (in every formula), and the size of the dense group-level
    design Bambi would build: rows x (levels x expression columns) over all group terms."""
    terms = [
        (":".join(factor), factor, width)
        for info in infos
        for factor, width in zip(info.group_factors, info.group_widths, strict=True)
    ]
    factors = {name for name, _, _ in terms}
    if len(factors) > settings.max_group_factors:
        raise InvalidRequest.one(
            "formula",
            f"{len(factors)} grouping factors; the limit is {settings.max_group_factors}",
        )
    n_rows = len(next(iter(columns.values())))
    levels: dict[str, int] = {}
    group_columns = 0
    for name, parts, width in terms:
        if name not in levels:
            levels[name] = len(set(zip(*(columns[c] for c in parts), strict=True)))
            if levels[name] > settings.max_levels_per_factor:
                raise InvalidRequest.one(
                    "formula",
                    f"the factor '{name[:60]}' has {levels[name]} levels; "
                    f"the limit is {settings.max_levels_per_factor}",
                )
        group_columns += levels[name] * width
    size = n_rows * group_columns * 8
    if size > settings.max_design_bytes:
        raise InvalidRequest.one(
            "formula",
            f"the group-level design would take about {_mib(size)} "
            f"({n_rows} rows x {group_columns} columns); the limit is "
            f"{_mib(settings.max_design_bytes)}",
        )


def _mib(size: int) -> str:
    return f"{size / 1024**2:,.1f} MiB"


def _check_binomial_form(fam: Family, info: FormulaInfo) -> None:
    if fam.response == "binomial" and info.trials is None:
        raise InvalidRequest.one(
            "formula", "a binomial response is written 'p(successes, trials) ~ ...'"
        )
    if fam.response != "binomial" and info.trials is not None:
        raise InvalidRequest.one("formula", "'p(successes, trials)' is for the binomial family")


def _check_categorical(
    categorical: Mapping[str, list[Scalar] | None],
    columns: Mapping[str, Sequence[Scalar]],
    used: set[str],
) -> None:
    for name, levels in categorical.items():
        field = f"categorical.{name}"
        if name not in used:
            raise InvalidRequest.one(field, f"'{name[:60]}' is not a column the model uses")
        if levels is None:
            continue
        if len(set(levels)) != len(levels):
            raise InvalidRequest.one(field, "levels must be distinct")
        unknown = {v for v in columns[name] if v is not None} - set(levels)
        if unknown:
            raise InvalidRequest.one(
                field, f"{len(unknown)} values of the column are not among the listed levels"
            )


def _resolve_sampler(request: FitRequest, settings: Settings) -> ResolvedSampler:
    s = request.sampler
    resolved = ResolvedSampler(
        draws=s.draws if s.draws is not None else settings.default_draws,
        tune=s.tune if s.tune is not None else settings.default_tune,
        chains=s.chains if s.chains is not None else settings.default_chains,
        seed=s.seed if s.seed is not None else secrets.randbelow(2**32),
        target_accept=s.target_accept,
        method=s.method,
        time_limit_s=s.time_limit_s or settings.fit_time_limit_s,
        parameterization=s.parameterization,
        adaptation=s.adaptation,
    )
    limits = {
        "draws": settings.max_draws,
        "tune": settings.max_tune,
        "chains": settings.max_chains,
        "time_limit_s": settings.max_fit_time_limit_s,
    }
    errors = [
        FieldError(f"sampler.{name}", f"{getattr(resolved, name)} is above the limit of {limit}")
        for name, limit in limits.items()
        if getattr(resolved, name) > limit
    ]
    total = resolved.draws * resolved.chains
    if total > settings.max_draws_x_chains:
        errors.append(
            FieldError(
                "sampler",
                f"draws x chains is {total}; the limit is {settings.max_draws_x_chains}",
            )
        )
    if errors:
        raise InvalidRequest(errors)
    return resolved


def validate_prediction_data(
    data: Records | Columns, spec: FitSpec, settings: Settings
) -> dict[str, list[Scalar]]:
    """New rows must carry every predictor and factor column the model uses."""
    columns = to_columns(
        data, max_rows=settings.max_prediction_rows, max_columns=settings.max_columns
    )
    needed = set()
    formulas = [(spec.formula, None)] + [
        (f"{p} ~ {rhs}", p) for p, rhs in spec.distributional.items()
    ]
    for formula, parameter in formulas:
        info = check_formula(formula, spec.columns, max_length=len(formula), parameter=parameter)
        needed |= info.predictors
        if info.trials is not None and isinstance(info.trials, str):
            needed.add(info.trials)
    missing = sorted(needed - set(columns))
    if missing:
        raise InvalidRequest.one("data", f"the new data lacks the columns {missing}")
    check_values(columns, needed, "data", allow_missing=False)
    return {name: columns[name] for name in sorted(needed)}
