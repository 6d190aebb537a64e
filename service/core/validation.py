"""Request validation beyond the schema: text, data shape, limits, formula, family and priors.

Everything here runs in the API before anything is queued, and the worker runs the formula
check again before Bambi sees the text. Each problem becomes an InvalidRequest that names the
field and what is wrong.

A fit request is checked in this order: its text is valid Unicode (a lone surrogate cannot
be stored), the data's shape, every formula (``formula``), the column names the model uses
(``formula.check_names``), what is declared categorical, the values, the response for the
family, the size of the design Bambi would build, the values of every transform
(``transforms``), the priors and the sampler. Prediction rows must hold, in every column the
model uses, the type the column had in training (a boolean, a whole-number label or a text
label of another type would silently miss or hit the wrong level), and are bounded by the
values the worker would compute for them (rows x posterior draws).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from service.core.errors import FieldError, InvalidRequest
from service.core.families import Family, check_link, check_response, check_trials, family
from service.core.formula import FormulaInfo, check_formula, check_names, formula_terms
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
from service.core.transforms import check_transforms, describe_rows

INVALID_TEXT = "holds text that is not valid Unicode (a lone surrogate code point)"


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


# ----------------------------------------------------------------------------- text


def check_text(value: object, field: str = "") -> None:
    """Refuse strings with a lone surrogate anywhere in ``value`` (models, dicts, lists).

    JSON can carry ``"\\ud800"``, but UTF-8 cannot encode it: the spec could not be stored
    and no answer that echoes it could be sent. A name that holds one is reported on the
    field that holds the name (``data`` for a column name, ``priors`` for a prior's key).
    """
    fields = sorted(set(_invalid_text(value, field)))
    if fields:
        raise InvalidRequest([FieldError(f or "body", INVALID_TEXT) for f in fields[:20]])


def _invalid_text(value: object, field: str) -> Iterator[str]:
    if isinstance(value, str):
        if not _valid(value):
            yield field
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _invalid_text(getattr(value, name), _join(field, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not _valid(key):
                yield field
            else:
                yield from _invalid_text(item, _join(field, str(key)))
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _invalid_text(item, field)


def _valid(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def _check_request_text(request: FitRequest) -> None:
    """Every string of the request but the data's values, which ``_check_data_text`` reads
    for the columns the model uses only (once their types are known)."""
    fields = {name: getattr(request, name) for name in type(request).model_fields}
    data = fields.pop("data")
    check_text(fields)
    check_text(_column_names(data), "data")


def _column_names(data: Records | Columns) -> set[str]:
    if isinstance(data, dict):
        return set(data)
    names: set[str] = set()
    for record in data:
        names.update(record)
    return names


def _check_data_text(columns: Mapping[str, Sequence[Scalar]], used: Collection[str]) -> None:
    """The text values of used columns (each column holds one type, ``check_values`` saw)."""
    errors = [
        FieldError(f"data.{name}", INVALID_TEXT)
        for name in sorted(used)
        if not _valid_text_column(columns[name])
    ]
    if errors:
        raise InvalidRequest(errors)


def _valid_text_column(values: Sequence[Scalar]) -> bool:
    if not isinstance(next((v for v in values if v is not None), None), str):
        return True
    texts = "".join(v for v in set(values) if isinstance(v, str))
    return _valid(texts)  # UTF-8 refuses a surrogate even next to its partner


# ----------------------------------------------------------------------------- fits


@dataclass
class _Formula:
    """One checked formula of a request: the main one or a distributional one."""

    field: str  # formula | distributional.<parameter>
    text: str
    info: FormulaInfo
    terms: list[Any]  # formulae's terms
    prefix: str = ""  # Bambi's prefix of the term names: "" or "<parameter>_"

    @property
    def term_names(self) -> list[str]:
        return [f"{self.prefix}{term.name}" for term in self.terms]


def validate_fit_request(request: FitRequest, settings: Settings) -> tuple[FitSpec, FormulaInfo]:
    """Check a fit request completely and return the normalised spec the worker will run."""
    _check_request_text(request)
    fam = family(request.family)
    link = check_link(fam, request.link)
    columns = to_columns(request.data, max_rows=settings.max_rows, max_columns=settings.max_columns)
    formulas = _formulas(request, fam, columns, settings)
    info = formulas[0].info
    used = set(info.variables).union(*(f.info.predictors for f in formulas[1:]))
    check_names(used, distributional=request.distributional)
    _check_categorical(request.categorical, columns, used, fam, info)
    check_values(columns, used, "data", allow_missing=request.na_action == "drop")
    _check_data_text(columns, used)
    rows = _complete_rows(columns, used)
    if not rows:
        raise InvalidRequest.one("data", "no row is complete in the columns the model uses")
    kept = {c: [columns[c][i] for i in rows] for c in sorted(used)}
    ordered = isinstance(request.categorical.get(info.response), list)
    check_response(fam, info.response, kept[info.response], ordered=ordered)
    if isinstance(info.trials, str):
        check_trials(kept[info.response], kept[info.trials], info.trials)
    _check_design(formulas, kept, request.categorical, settings)
    for formula in formulas:
        nodes = [formula.info.response_transform, *formula.info.transforms]
        check_transforms([n for n in nodes if n is not None], kept, field=formula.field, rows=rows)
    auxiliary = [a for a in fam.auxiliary if a not in request.distributional]
    terms = [name for formula in formulas for name in formula.term_names]
    check_priors(request.priors, terms=terms, auxiliary=auxiliary)
    spec = FitSpec(
        formula=request.formula,
        family=fam.name,
        link=link,
        priors=request.priors,
        distributional=request.distributional,
        categorical=request.categorical,
        columns=kept,
        n_dropped=len(next(iter(columns.values()))) - len(rows),
        sampler=_resolve_sampler(request, settings),
        name=request.name,
    )
    return spec, info


def _complete_rows(columns: Mapping[str, Sequence[Scalar]], used: Collection[str]) -> list[int]:
    n = len(next(iter(columns.values())))
    return [i for i in range(n) if all(columns[c][i] is not None for c in used)]


def _formulas(
    request: FitRequest, fam: Family, columns: Mapping[str, Sequence[Scalar]], settings: Settings
) -> list[_Formula]:
    """The main formula and each distributional one, checked; the response is no predictor."""
    info = check_formula(request.formula, columns, max_length=settings.max_formula_length)
    _check_binomial_form(fam, info)
    formulas = [_Formula("formula", request.formula, info, formula_terms(request.formula))]
    for parameter, rhs in request.distributional.items():
        field = f"distributional.{parameter}"
        if parameter not in fam.auxiliary:
            raise InvalidRequest.one(
                field, f"{fam.name} has no auxiliary parameter '{parameter[:40]}'"
            )
        text = f"{parameter} ~ {rhs}"
        extra = check_formula(
            text,
            columns,
            max_length=settings.max_formula_length,
            field_name=field,
            parameter=parameter,
        )
        if info.response in extra.predictors:
            raise InvalidRequest.one(
                field, f"the response '{info.response[:40]}' cannot also be a predictor"
            )
        terms = formula_terms(text, field_name=field)
        formulas.append(_Formula(field, text, extra, terms, prefix=f"{parameter}_"))
    return formulas


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


# ---------------------------------------------------------------------- design size


def _check_design(
    formulas: Sequence[_Formula],
    columns: Mapping[str, Sequence[Scalar]],
    categorical: Mapping[str, list[Scalar] | None],
    settings: Settings,
) -> None:
    """Limits on grouping factors and categoricals (in every formula), and the size of the
    dense design Bambi would build: rows x (common columns + group-level columns).

    A common term is one column per combination of the levels of its categoricals (an
    interaction multiplies them, a number is one column); a group term is its expression's
    columns times its factor's levels. Counting every categorical at full rank bounds what
    formulae builds from above.
    """
    levels = _Levels(columns, categorical, settings)
    common = group = 0
    factors: set[tuple[str, ...]] = set()
    for formula in formulas:
        for term in formula.terms:
            if hasattr(term, "factor"):  # a group-specific term: expr | factor
                factor = tuple(str(c.name) for c in term.factor.components)
                factors.add(factor)
                width = levels.width(term.expr, formula.field)
                group += width * levels.factor(factor, formula.field)
            else:
                common += levels.width(term, formula.field)
    if len(factors) > settings.max_group_factors:
        raise InvalidRequest.one(
            "formula",
            f"{len(factors)} grouping factors; the limit is {settings.max_group_factors}",
        )
    n_rows = len(next(iter(columns.values())))
    if n_rows * group * 8 > settings.max_design_bytes:
        raise InvalidRequest.one(
            "formula",
            f"the group-level design would take about {_mib(n_rows * group * 8)} "
            f"({n_rows} rows x {group} columns); the limit is "
            f"{_mib(settings.max_design_bytes)}",
        )
    size = n_rows * (common + group) * 8
    if size > settings.max_design_bytes:
        raise InvalidRequest.one(
            "formula",
            f"the design would take about {_mib(size)} ({n_rows} rows x {common} common and "
            f"{group} group-level columns); the limit is {_mib(settings.max_design_bytes)}",
        )


class _Levels:
    """Levels of categoricals and factors in the data, and the columns of terms."""

    def __init__(
        self,
        columns: Mapping[str, Sequence[Scalar]],
        declared: Mapping[str, list[Scalar] | None],
        settings: Settings,
    ) -> None:
        self.columns = columns
        self.declared = declared
        self.settings = settings
        self.counts: dict[tuple[str, ...], int] = {}

    def count(self, names: tuple[str, ...]) -> int:
        if names not in self.counts:
            listed = self.declared.get(names[0]) if len(names) == 1 else None
            if listed is not None:
                self.counts[names] = len(listed)
            else:
                values = (self.columns[name] for name in names)
                self.counts[names] = len(set(zip(*values, strict=True)))
        return self.counts[names]

    def factor(self, names: tuple[str, ...], field: str) -> int:
        """Levels of a grouping factor (one column, or several joined by ':')."""
        count = self.count(names)
        if count > self.settings.max_levels_per_factor:
            raise InvalidRequest.one(
                field,
                f"the factor '{':'.join(names)[:60]}' has {count} levels; "
                f"the limit is {self.settings.max_levels_per_factor}",
            )
        return count

    def width(self, term: Any, field: str) -> int:
        """Design columns of a term (1 for the intercept)."""
        width = 1
        for component in getattr(term, "components", []):
            names = self.categorical(component)
            if names:
                count = self.count(names)
                if count > self.settings.max_levels_per_categorical:
                    shown = ", ".join(names)[:60]
                    raise InvalidRequest.one(
                        field,
                        f"the categorical '{shown}' has {count} levels; a term's categorical "
                        f"may have {self.settings.max_levels_per_categorical} (a factor with "
                        "many levels fits better as a group term, as in '(1 | ...)')",
                    )
                width *= count
        return width

    def categorical(self, component: Any) -> tuple[str, ...]:
        """The columns whose levels a term component takes, or () for a number."""
        call = getattr(component, "call", None)
        if call is not None:
            names = sorted(name for name in component.var_names if name)
            return tuple(names) if call.callee == "C" else ()
        name = str(component.name)
        if getattr(component, "reference", None) is not None:
            return ()  # x[level]: one indicator column
        first = next((v for v in self.columns[name] if v is not None), None)
        if name in self.declared or isinstance(first, str | bool):
            return (name,)
        return ()


def _mib(size: int) -> str:
    return f"{size / 1024**2:,.1f} MiB"


# --------------------------------------------------------------------------- sampler


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


# ----------------------------------------------------------------------- predictions


def validate_prediction_data(
    data: Records | Columns, spec: FitSpec, settings: Settings
) -> dict[str, list[Scalar]]:
    """New rows must carry every column the model uses, each with its training type, and
    values every transform of the model can take; the rows x draws they cost is bounded."""
    check_text(_column_names(data), "data")
    columns = to_columns(
        data, max_rows=settings.max_prediction_rows, max_columns=settings.max_columns
    )
    _check_prediction_size(len(next(iter(columns.values()))), spec, settings)
    infos = [
        check_formula(formula, spec.columns, max_length=len(formula), parameter=parameter)
        for formula, parameter in [(spec.formula, None)]
        + [(f"{p} ~ {rhs}", p) for p, rhs in spec.distributional.items()]
    ]
    needed: set[str] = set()
    for info in infos:
        needed |= info.predictors
        if isinstance(info.trials, str):
            needed.add(info.trials)
    missing = sorted(needed - set(columns))
    if missing:
        raise InvalidRequest.one("data", f"the new data lacks the columns {missing}")
    check_values(columns, needed, "data", allow_missing=False)
    _check_data_text(columns, needed)
    labels = set(spec.categorical).union(*(info.categorical for info in infos))
    _check_types(columns, spec.columns, needed, labels)
    for info in infos:
        check_transforms(info.transforms, columns, field="data", reference=spec.columns)
    return {name: columns[name] for name in sorted(needed)}


def _check_prediction_size(n_rows: int, spec: FitSpec, settings: Settings) -> None:
    draws = spec.sampler.draws * spec.sampler.chains
    cells = n_rows * draws
    if cells > settings.max_prediction_cells:
        most = settings.max_prediction_cells // draws
        raise InvalidRequest.one(
            "data",
            f"{n_rows} rows x {draws} posterior draws ({spec.sampler.chains} chains x "
            f"{spec.sampler.draws}) would be {cells:,} predicted values; the limit is "
            f"{settings.max_prediction_cells:,}: send at most {most} rows per request",
        )


def _is_boolean(value: Scalar) -> bool:
    return isinstance(value, bool)


def _is_text(value: Scalar) -> bool:
    return isinstance(value, str)


def _is_whole(value: Scalar) -> bool:
    return type(value) is int


def _is_number(value: Scalar) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: What each kind of training column takes in new rows, and how a refusal describes it.
_TYPES = {
    "boolean": (_is_boolean, "true/false values"),
    "text": (_is_text, "text"),
    "whole": (_is_whole, "whole numbers (send 3, not 3.0, '3' or true)"),
    "number": (_is_number, "numbers (not text or true/false)"),
}


def _check_types(
    columns: Mapping[str, Sequence[Scalar]],
    training: Mapping[str, Sequence[Scalar]],
    needed: Collection[str],
    labels: Collection[str],
) -> None:
    """Each column holds the type it had in training: booleans, text, or numbers; a column
    of whole numbers that labels levels (a factor, ``C(...)``, declared categorical) holds
    whole numbers only, since 1.0, "1" and true would match no level or the wrong one."""
    errors = []
    for name in sorted(needed):
        kind = _kind(training[name], labels=name in labels)
        accepts, described = _TYPES[kind]
        bad = [i for i, value in enumerate(columns[name]) if not accepts(value)]
        if bad:
            errors.append(
                FieldError(
                    f"data.{name[:60]}",
                    f"the model was fitted with {described} in this column; "
                    f"{describe_rows(bad)} {'hold' if len(bad) > 1 else 'holds'} something else",
                )
            )
    if errors:
        raise InvalidRequest(errors)


def _kind(values: Sequence[Scalar], *, labels: bool) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return "boolean"
    if kinds == {str}:
        return "text"
    if kinds == {int} and labels:
        return "whole"
    return "number"
