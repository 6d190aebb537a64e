"""Prior allow-list: distribution names and their parameters, checked before Bambi (which
looks a prior's name up on PyMC with ``getattr``) ever sees them."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from service.core.errors import FieldError, InvalidRequest
from service.core.schemas import PriorSpec


@dataclass(frozen=True)
class Distribution:
    """A distribution a prior may use."""

    params: tuple[str, ...]
    positive: tuple[str, ...] = ()
    positive_support: bool = False


DISTRIBUTIONS: dict[str, Distribution] = {
    "Normal": Distribution(("mu", "sigma"), ("sigma",)),
    "StudentT": Distribution(("nu", "mu", "sigma"), ("nu", "sigma")),
    "Cauchy": Distribution(("alpha", "beta"), ("beta",)),
    "Laplace": Distribution(("mu", "b"), ("b",)),
    "Logistic": Distribution(("mu", "s"), ("s",)),
    "Flat": Distribution(()),
    "HalfNormal": Distribution(("sigma",), ("sigma",), True),
    "HalfCauchy": Distribution(("beta",), ("beta",), True),
    "HalfStudentT": Distribution(("nu", "sigma"), ("nu", "sigma"), True),
    "Exponential": Distribution(("lam",), ("lam",), True),
    "Gamma": Distribution(("alpha", "beta"), ("alpha", "beta"), True),
    "InverseGamma": Distribution(("alpha", "beta"), ("alpha", "beta"), True),
    "LogNormal": Distribution(("mu", "sigma"), ("sigma",), True),
    "HalfFlat": Distribution((), (), True),
    "Uniform": Distribution(("lower", "upper")),
    "Beta": Distribution(("alpha", "beta"), ("alpha", "beta")),
    # A fixed value: only as a hyperprior, e.g. a group SD fixed at 1.
    "Constant": Distribution(("value",), ("value",), True),
}


def check_priors(
    priors: Mapping[str, PriorSpec],
    *,
    terms: Collection[str],
    auxiliary: Collection[str],
) -> None:
    """Every prior names a term or auxiliary parameter and uses an allowed distribution.

    Group-level terms (``1|g``) take a Normal whose ``sigma`` is a hyperprior with positive
    support; auxiliary parameters (``sigma``, ``nu``...) take priors with positive support.
    """
    errors: list[FieldError] = []
    for name, prior in priors.items():
        field = f"priors.{name}"
        if name not in terms and name not in auxiliary:
            known = sorted([*terms, *auxiliary])
            errors.append(FieldError(field, f"the model has no term '{name[:60]}'; it has {known}"))
            continue
        errors += _check(prior, field, hyper=False)
        nested = [k for k, v in prior.params.items() if isinstance(v, PriorSpec)]
        if nested and "|" not in name:
            errors.append(
                FieldError(f"{field}.{nested[0]}", "only group-level terms take hyperpriors")
            )
        if "|" in name:
            errors += _check_group_prior(prior, field)
        elif name in auxiliary and prior.dist in DISTRIBUTIONS and not _positive(prior):
            errors.append(FieldError(field, f"'{name}' is positive: use a prior on (0, inf)"))
    if errors:
        raise InvalidRequest(errors)


def _positive(prior: PriorSpec) -> bool:
    """Whether the prior puts all its mass on (0, inf) (Uniform: when lower >= 0)."""
    if prior.dist == "Uniform":
        lower = prior.params.get("lower")
        return isinstance(lower, float | int) and lower >= 0
    return DISTRIBUTIONS[prior.dist].positive_support


def _check(prior: PriorSpec, field: str, *, hyper: bool) -> list[FieldError]:
    dist = DISTRIBUTIONS.get(prior.dist)
    if dist is None or (prior.dist == "Constant" and not hyper):
        allowed = sorted(d for d in DISTRIBUTIONS if d != "Constant")
        return [FieldError(field, f"'{prior.dist[:40]}' is not allowed; use one of {allowed}")]
    errors: list[FieldError] = []
    missing = [p for p in dist.params if p not in prior.params]
    extra = [p for p in prior.params if p not in dist.params]
    if missing or extra:
        errors.append(FieldError(field, f"{prior.dist} takes the parameters {list(dist.params)}"))
    for name, value in prior.params.items():
        if isinstance(value, PriorSpec):
            if hyper:
                errors.append(FieldError(f"{field}.{name}", "priors nest one level at most"))
            else:
                errors += _check(value, f"{field}.{name}", hyper=True)
        elif name in dist.positive and not value > 0:
            errors.append(FieldError(f"{field}.{name}", "must be greater than 0"))
    lower, upper = prior.params.get("lower"), prior.params.get("upper")
    if isinstance(lower, float) and isinstance(upper, float) and not lower < upper:
        errors.append(FieldError(field, "lower must be below upper"))
    return errors


def _check_group_prior(prior: PriorSpec, field: str) -> list[FieldError]:
    sigma = prior.params.get("sigma")
    if prior.dist != "Normal" or not isinstance(sigma, PriorSpec):
        return [
            FieldError(
                field,
                "a group-level term takes a Normal prior whose sigma is itself a prior, e.g. "
                "{'dist': 'Normal', 'params': {'mu': 0, 'sigma': {'dist': 'HalfNormal', "
                "'params': {'sigma': 1}}}}",
            )
        ]
    mu = prior.params.get("mu")
    errors = []
    if isinstance(mu, PriorSpec) or mu != 0:
        errors.append(FieldError(f"{field}.mu", "group-level effects are centred on 0"))
    if sigma.dist in DISTRIBUTIONS and not _positive(sigma):
        errors.append(FieldError(f"{field}.sigma", "an SD needs a prior on (0, inf)"))
    return errors
