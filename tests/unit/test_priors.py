"""Priors are matched against an allow-list before Bambi (which looks names up on PyMC
with getattr) sees them; group-level terms need a Normal with a hyperprior SD."""

from __future__ import annotations

from typing import Any

import pytest

from service.api.validation import check_priors
from service.core.errors import InvalidRequest
from service.core.schemas import PriorSpec

TERMS = ["Intercept", "x", "1|g"]
AUX = ["sigma"]


def prior(dist: str, **params: Any) -> dict[str, Any]:
    return {"dist": dist, "params": params}


def check(priors: dict[str, Any]) -> None:
    specs = {k: PriorSpec.model_validate(v) for k, v in priors.items()}
    check_priors(specs, terms=TERMS, auxiliary=AUX)


def test_priors_in_bambis_vocabulary_pass() -> None:
    check(
        {
            "Intercept": prior("Normal", mu=0, sigma=5),
            "x": prior("StudentT", nu=3, mu=0, sigma=1),
            "1|g": prior("Normal", mu=0, sigma=prior("HalfCauchy", beta=2)),
            "sigma": prior("Exponential", lam=1),
        }
    )
    check({"1|g": prior("Normal", mu=0, sigma=prior("Constant", value=1))})
    check({"1|g": prior("Normal", mu=0, sigma=prior("Uniform", lower=0, upper=100))})


@pytest.mark.parametrize(
    ("priors", "field", "message"),
    [
        ({"slope": prior("Normal", mu=0, sigma=1)}, "priors.slope", "has no term 'slope'"),
        ({"x": prior("__import__", mu=0)}, "priors.x", "is not allowed"),
        ({"x": prior("Constant", value=1)}, "priors.x", "is not allowed"),
        ({"x": prior("Normal", mu=0)}, "priors.x", "takes the parameters ['mu', 'sigma']"),
        ({"x": prior("Normal", mu=0, sigma=1, tau=2)}, "priors.x", "takes the parameters"),
        ({"x": prior("Normal", mu=0, sigma=-1)}, "priors.x.sigma", "greater than 0"),
        ({"x": prior("Uniform", lower=2, upper=1)}, "priors.x", "lower must be below upper"),
        ({"1|g": prior("Normal", mu=0, sigma=1)}, "priors.1|g", "sigma is itself a prior"),
        ({"1|g": prior("StudentT", nu=3, mu=0, sigma=1)}, "priors.1|g", "Normal prior"),
        (
            {"1|g": prior("Normal", mu=0, sigma=prior("Normal", mu=0, sigma=1))},
            "priors.1|g.sigma",
            "prior on (0, inf)",
        ),
        (
            {"1|g": prior("Normal", mu=1, sigma=prior("HalfNormal", sigma=1))},
            "priors.1|g.mu",
            "centred on 0",
        ),
        (
            {"x": prior("Normal", mu=prior("Normal", mu=0, sigma=1), sigma=1)},
            "priors.x.mu",
            "only group-level terms take hyperpriors",
        ),
        ({"sigma": prior("Normal", mu=0, sigma=1)}, "priors.sigma", "is positive"),
    ],
)
def test_refused_priors_name_the_field(priors: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check(priors)
    assert any(e.field.startswith(field) and message in e.message for e in caught.value.errors), (
        caught.value.errors
    )
