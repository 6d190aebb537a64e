"""Property-based checks: schemathesis drives the service's own OpenAPI schema and no
request may get a 5xx; hypothesis feeds the request models and the formula checker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from service.api.app import create_app
from service.api.validation import validate_fit_request
from service.core.errors import InvalidRequest
from service.core.formula import check_formula
from service.core.schemas import FitRequest
from service.core.settings import Settings
from tests.conftest import clean_redis, redis_url
from tests.unit.test_api import RecordingDispatcher

FUZZ_DIR = Path("/tmp/hbm-service-fuzz")


def fuzz_app() -> Any:
    clean_redis(redis_url(10))
    app = create_app(Settings(redis_url=redis_url(10), data_dir=FUZZ_DIR))
    app.state.services.dispatcher = RecordingDispatcher()
    for queue in ("hbm.fits", "hbm.interactive"):  # readiness wants live workers
        app.state.services.store.announce_worker(queue, "fuzz:1", ttl_s=3600)
    return app


schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error])


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
NAMES = st.sampled_from(["y", "x", "g", "weird name", ""])


@given(
    columns=st.dictionaries(NAMES, st.lists(SCALARS, max_size=6), max_size=4),
    formula=st.sampled_from(["y ~ x + (1 | g)", "y ~ (x | g)", "y ~ x", "y ~ `weird name`"]),
    family=st.sampled_from(["gaussian", "bernoulli", "poisson", "beta", "cumulative", "t"]),
)
@settings(max_examples=300, deadline=None)
def test_validation_refuses_cleanly_or_accepts(
    columns: dict[str, list[Any]], formula: str, family: str
) -> None:
    request = FitRequest(data=columns, formula=formula, family=family)
    try:
        spec, _ = validate_fit_request(request, Settings())
    except InvalidRequest as refused:
        assert refused.errors and all(e.field and e.message for e in refused.errors)
    else:
        assert spec.columns and len({len(v) for v in spec.columns.values()}) == 1


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
@settings(max_examples=500, deadline=None)
def test_any_text_is_either_a_checked_formula_or_a_clean_refusal(text: str) -> None:
    try:
        info = check_formula(text, {"y", "x", "g"})
    except InvalidRequest as refused:
        assert refused.errors[0].field == "formula"
    else:
        assert info.variables <= {"y", "x", "g"}


@pytest.mark.parametrize("text", ["y ~ x" + ")" * 5, "y ~ (" * 3, "y ~ `", "~", "|"])
def test_broken_brackets_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        check_formula(text, {"y", "x"})
