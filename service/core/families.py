"""Families the service fits: links, auxiliary parameters and what each response must be.

This mirrors Bambi 0.21's built-in families (a worker-side test checks that it still does).
The API uses it to refuse a response that does not suit the family before anything is
queued: no silent recoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from service.core.errors import InvalidRequest
from service.core.schemas import Scalar


@dataclass(frozen=True)
class Family:
    """One response distribution."""

    name: str
    parent: str
    links: tuple[str, ...]
    default_link: str
    auxiliary: tuple[str, ...]
    response: str  # real | binary | binomial | count | positive | unit | ordinal


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("gaussian", "mu", ("identity", "log", "inverse"), "identity", ("sigma",), "real"),
        Family("t", "mu", ("identity", "log", "inverse"), "identity", ("sigma", "nu"), "real"),
        Family("bernoulli", "p", ("logit", "probit", "cloglog", "identity"), "logit", (), "binary"),
        Family(
            "binomial", "p", ("logit", "probit", "cloglog", "identity"), "logit", (), "binomial"
        ),
        Family("poisson", "mu", ("log", "identity"), "log", (), "count"),
        Family(
            "negativebinomial", "mu", ("log", "identity", "cloglog"), "log", ("alpha",), "count"
        ),
        Family("gamma", "mu", ("inverse", "log", "identity"), "inverse", ("alpha",), "positive"),
        Family("beta", "mu", ("logit", "probit", "cloglog"), "logit", ("kappa",), "unit"),
        Family("cumulative", "p", ("logit", "probit", "cloglog"), "logit", (), "ordinal"),
    )
}


#: Parameter names of every family (main and auxiliary), with the thresholds of the ordinal
#: family that the service leaves to Bambi's default prior: Bambi names a PyMC variable after
#: each, so none may be a column name the model uses.
PARAMETER_NAMES = frozenset(
    {name for f in FAMILIES.values() for name in (f.parent, *f.auxiliary)} | {"threshold"}
)


#: NUTS's target acceptance rate when the request sets none: rstanarm's adapt_delta (0.95
#: for every model it fits), except gaussian models, whose likelihood the service collapses
#: to sufficient statistics and whose group effects it centres when the data identify them:
#: they sample without divergences at 0.8, with larger steps (faster).
DEFAULT_TARGET_ACCEPT = 0.95
GAUSSIAN_TARGET_ACCEPT = 0.8


def default_target_accept(name: str) -> float:
    """The target acceptance rate a fit of family ``name`` samples at by default."""
    return GAUSSIAN_TARGET_ACCEPT if name == "gaussian" else DEFAULT_TARGET_ACCEPT


def family(name: str) -> Family:
    """The family called ``name``, or a 422 naming the supported ones."""
    if name not in FAMILIES:
        raise InvalidRequest.one(
            "family", f"'{name[:40]}' is not supported; use one of {sorted(FAMILIES)}"
        )
    return FAMILIES[name]


def check_link(fam: Family, link: str | None) -> str:
    """The link to use for the family's main parameter."""
    if link is None:
        return fam.default_link
    if link not in fam.links:
        raise InvalidRequest.one(
            "link", f"'{link[:40]}' is not a link of {fam.name}; use one of {list(fam.links)}"
        )
    return link


def _numbers(values: Sequence[Scalar]) -> list[float] | None:
    numbers = [v for v in values if v is not None]
    if any(isinstance(v, bool | str) for v in numbers):
        return None
    return [float(v) for v in numbers]


def check_response(fam: Family, name: str, values: Sequence[Scalar], *, ordered: bool) -> None:
    """Refuse a response that does not suit the family (named field ``data.<name>``)."""

    def refuse(message: str) -> InvalidRequest:
        return InvalidRequest.one(f"data.{name}", f"a {fam.name} response {message}")

    if fam.response == "ordinal":
        distinct = {v for v in values if v is not None}
        if len(distinct) < 3:
            raise refuse("needs at least 3 ordered categories")
        if any(isinstance(v, str) for v in distinct) and not ordered:
            raise refuse("given as text needs its order: list its levels under 'categorical'")
        return
    if fam.response == "binary":
        if all(isinstance(v, bool) for v in values if v is not None):
            return
        numbers = _numbers(values)
        if numbers is None or set(numbers) - {0.0, 1.0}:
            raise refuse("must be 0/1 or true/false")
        return
    numbers = _numbers(values)
    if numbers is None:
        raise refuse("must be numeric; it holds text or booleans")
    if fam.response == "count" or fam.response == "binomial":
        if any(v < 0 or not float(v).is_integer() for v in numbers):
            raise refuse("must hold whole numbers of 0 or more")
    elif fam.response == "positive":
        if any(v <= 0 for v in numbers):
            raise refuse("must be greater than 0")
    elif fam.response == "unit" and any(not 0 < v < 1 for v in numbers):
        raise refuse("must lie strictly between 0 and 1")
    if any(not math.isfinite(v) for v in numbers):
        raise refuse("must be finite")


def check_trials(successes: Sequence[Scalar], trials: Sequence[Scalar], name: str) -> None:
    """Binomial: trials are whole numbers above 0, and never fewer than the successes."""
    numbers = _numbers(trials)
    if numbers is None or any(v <= 0 or not v.is_integer() for v in numbers):
        raise InvalidRequest.one(f"data.{name}", "binomial trials must be whole numbers above 0")
    for s, n in zip(successes, trials, strict=True):
        if isinstance(s, int | float) and isinstance(n, int | float) and s > n:
            raise InvalidRequest.one(
                f"data.{name}", "binomial trials must not be fewer than the successes"
            )
