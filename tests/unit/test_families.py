"""The family table the API checks requests with mirrors Bambi's families, and each
family refuses responses that do not suit it (no silent recoding)."""

from __future__ import annotations

from typing import Any

import pytest

from service.core.errors import InvalidRequest
from service.core.families import FAMILIES, check_link, check_response, family


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_table_mirrors_bambi(name: str) -> None:
    from bambi.defaults import get_builtin_family

    ours = FAMILIES[name]
    theirs = get_builtin_family(name)
    assert theirs.likelihood.parent == ours.parent
    assert set(theirs.SUPPORTED_LINKS[ours.parent]) == set(ours.links)
    assert theirs.link[ours.parent].name == ours.default_link
    # Ordinal thresholds keep Bambi's ordered default prior: the service does not offer them.
    hidden = {"threshold"} if name == "cumulative" else set()
    assert set(theirs.likelihood.params) - {ours.parent} == set(ours.auxiliary) | hidden


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("gaussian", [1.5, -2, 0]),
        ("t", [1.5, -2, 0]),
        ("bernoulli", [0, 1, 1]),
        ("bernoulli", [True, False]),
        ("binomial", [0, 3, 7]),
        ("poisson", [0, 3, 7.0]),
        ("negativebinomial", [0, 12]),
        ("gamma", [0.1, 5]),
        ("beta", [0.01, 0.5, 0.99]),
        ("cumulative", [1, 2, 3, 2]),
    ],
)
def test_suitable_responses_pass(name: str, values: list[Any]) -> None:
    check_response(FAMILIES[name], "y", values, ordered=False)


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("gaussian", ["a", "b"], "must be numeric"),
        ("gaussian", [True, False], "must be numeric"),
        ("bernoulli", [0, 1, 2], "must be 0/1 or true/false"),
        ("bernoulli", ["yes", "no"], "must be 0/1 or true/false"),
        ("poisson", [0, -1], "whole numbers of 0 or more"),
        ("poisson", [0.5, 1], "whole numbers of 0 or more"),
        ("negativebinomial", [1.2], "whole numbers of 0 or more"),
        ("gamma", [0, 1], "greater than 0"),
        ("beta", [0, 0.5], "strictly between 0 and 1"),
        ("beta", [0.5, 1], "strictly between 0 and 1"),
        ("cumulative", [1, 2, 1], "at least 3 ordered categories"),
        ("cumulative", ["low", "mid", "high"], "needs its order"),
    ],
)
def test_unsuitable_responses_are_refused(name: str, values: list[Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_response(FAMILIES[name], "y", values, ordered=False)
    assert caught.value.errors[0].field == "data.y"
    assert message in caught.value.errors[0].message


def test_unknown_family_and_link_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="not supported"):
        family("weibull")
    with pytest.raises(InvalidRequest, match="not a link of poisson"):
        check_link(FAMILIES["poisson"], "logit")
    assert check_link(FAMILIES["gamma"], None) == "inverse"
