"""What the client sends: the fit request's options as pydantic models, and data tables
(a pandas DataFrame, a dict of columns or a list of records) as the JSON the service reads.

Only the options a caller sets are sent, so the service's defaults apply to the rest. Unknown
options pass through (a newer service may know them; the service refuses a typo with a 422
naming the field).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Scalar = str | int | float | bool | None
Table = list[dict[str, Scalar]] | dict[str, list[Scalar]]


class Options(BaseModel):
    """Base of the request models: unset fields are not sent; unknown ones are."""

    model_config = ConfigDict(extra="allow")


class Sampler(Options):
    """MCMC settings; unset ones take the service's defaults (4 chains x 1000 draws)."""

    draws: int | None = None
    tune: int | None = None
    chains: int | None = None
    seed: int | None = None
    target_accept: float | None = None
    refit_divergent: bool | None = None
    time_limit_s: int | None = None
    parameterization: Literal["auto", "noncentered", "centered"] | None = None
    adaptation: Literal["diag", "low_rank"] | None = None


class Prior(Options):
    """A prior in Bambi's words; a parameter may itself be a prior (a hyperprior)."""

    dist: str
    params: dict[str, float | Prior] = {}


class FitOptions(Options):
    """A fit request but its data."""

    formula: str
    family: str | None = None
    link: str | None = None
    priors: dict[str, Prior] | None = None
    categorical: dict[str, list[Scalar] | None] | None = None
    na_action: Literal["error", "drop"] | None = None
    distributional: dict[str, str] | None = None
    group_correlations: Literal["estimate", "independent"] | None = None
    sampler: Sampler | None = None
    name: str | None = None

    @classmethod
    def given(cls, **fields: Any) -> FitOptions:
        """The options given a value; those left None are not sent."""
        return cls.model_validate({k: v for k, v in fields.items() if v is not None})

    def body(self, data: Any) -> dict[str, Any]:
        """The JSON body of ``POST /v1/fits``: ``data`` as a table, and the options set."""
        return {"data": table(data), **self.model_dump(mode="json", exclude_unset=True)}


def table(data: Any) -> Table:
    """``data`` as the service reads it: columns (from a DataFrame or a mapping of columns)
    or records. Missing values (None, NaN, pandas' NA) become null; numpy scalars become
    numbers; anything else that is not text, a number or a boolean is a TypeError naming
    its column. A DataFrame's index is not sent (``reset_index()`` to send it)."""
    if hasattr(data, "columns") and hasattr(data, "to_dict"):  # a pandas DataFrame
        data = data.to_dict(orient="list")
    if isinstance(data, Mapping):
        return {str(name): _column(str(name), values) for name, values in data.items()}
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        rows: list[dict[str, Scalar]] = []
        for i, row in enumerate(data):
            if not isinstance(row, Mapping):
                raise TypeError(f"data row {i} is a {type(row).__name__}, not a mapping")
            rows.append({str(k): _scalar(str(k), v) for k, v in row.items()})
        return rows
    raise TypeError(
        "data must be a pandas DataFrame, a mapping of columns or a list of records, "
        f"not a {type(data).__name__}"
    )


def _column(name: str, values: Any) -> list[Scalar]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"column {name!r} must be a sequence of values")
    return [_scalar(name, v) for v in values]


def _scalar(column: str, value: Any) -> Scalar:
    """One JSON value of ``column``."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise ValueError(f"column {column!r}: {value} is not a finite number")
        return value
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _scalar(column, item())
    raise TypeError(
        f"column {column!r}: {type(value).__name__} values cannot be sent; "
        "convert them to text or numbers"
    )
