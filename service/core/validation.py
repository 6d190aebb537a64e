"""Request validation beyond the schema: data shape, limits, formula and family.

Everything here runs in the API before anything is queued, and the worker runs the formula
check again before Bambi sees the text. Each problem becomes an InvalidRequest that names the
field and what is wrong.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence

from service.core.errors import FieldError, InvalidRequest
from service.core.formula import FormulaInfo, check_formula
from service.core.schemas import (
    Columns,
    FitRequest,
    FitSpec,
    Records,
    ResolvedSampler,
    Scalar,
)
from service.core.settings import Settings

#: Families the service fits, and what their response must look like.
FAMILIES: Mapping[str, str] = {"gaussian": "numeric"}


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


def check_values(columns: Mapping[str, Sequence[Scalar]], used: set[str], field: str) -> None:
    """Refuse missing or non-finite values in the columns a model uses."""
    errors: list[FieldError] = []
    for name in sorted(used):
        values = columns[name]
        missing = sum(value is None for value in values)
        if missing:
            errors.append(FieldError(f"{field}.{name}", f"{missing} missing values"))
        bad = sum(isinstance(v, float) and not math.isfinite(v) for v in values)
        if bad:
            errors.append(FieldError(f"{field}.{name}", f"{bad} values are not finite numbers"))
        kinds = {type(v) for v in values if v is not None}
        if str in kinds and kinds - {str}:
            errors.append(FieldError(f"{field}.{name}", "mixes text with numbers or booleans"))
    if errors:
        raise InvalidRequest(errors)


def check_response(columns: Mapping[str, Sequence[Scalar]], response: str, family: str) -> None:
    """The response must suit the family (gaussian: numbers, not text or booleans)."""
    if FAMILIES[family] == "numeric":
        values = columns[response]
        if any(isinstance(v, bool | str) for v in values):
            raise InvalidRequest.one(
                f"data.{response}",
                f"the response of a {family} model must be numeric; it holds text or booleans",
            )


def validate_fit_request(request: FitRequest, settings: Settings) -> tuple[FitSpec, FormulaInfo]:
    """Check a fit request completely and return the normalised spec the worker will run."""
    if request.family not in FAMILIES:
        raise InvalidRequest.one(
            "family", f"'{request.family[:40]}' is not supported; use one of {sorted(FAMILIES)}"
        )
    columns = to_columns(request.data, max_rows=settings.max_rows, max_columns=settings.max_columns)
    info = check_formula(request.formula, columns, max_length=settings.max_formula_length)
    check_values(columns, info.variables, "data")
    check_response(columns, info.response, request.family)
    sampler = _resolve_sampler(request, settings)
    spec = FitSpec(
        formula=request.formula,
        family=request.family,
        columns={name: columns[name] for name in sorted(info.variables)},
        sampler=sampler,
        name=request.name,
    )
    return spec, info


def _resolve_sampler(request: FitRequest, settings: Settings) -> ResolvedSampler:
    s = request.sampler
    resolved = ResolvedSampler(
        draws=s.draws if s.draws is not None else settings.default_draws,
        tune=s.tune if s.tune is not None else settings.default_tune,
        chains=s.chains if s.chains is not None else settings.default_chains,
        seed=s.seed if s.seed is not None else secrets.randbelow(2**32),
        target_accept=s.target_accept,
        method=s.method,
        parameterization=s.parameterization,
        adaptation=s.adaptation,
    )
    limits = {
        "draws": settings.max_draws,
        "tune": settings.max_tune,
        "chains": settings.max_chains,
    }
    errors = [
        FieldError(f"sampler.{name}", f"{getattr(resolved, name)} is above the limit of {limit}")
        for name, limit in limits.items()
        if getattr(resolved, name) > limit
    ]
    if errors:
        raise InvalidRequest(errors)
    return resolved


def validate_prediction_data(
    data: Records | Columns, info: FormulaInfo, settings: Settings
) -> dict[str, list[Scalar]]:
    """New rows must carry every predictor and factor column the model uses."""
    columns = to_columns(
        data, max_rows=settings.max_prediction_rows, max_columns=settings.max_columns
    )
    missing = sorted(info.predictors - set(columns))
    if missing:
        raise InvalidRequest.one("data", f"the new data lacks the columns {missing}")
    check_values(columns, info.predictors, "data")
    return {name: columns[name] for name in sorted(info.predictors)}
