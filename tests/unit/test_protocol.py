"""The API and the workers speak one typed protocol: every call is a pydantic model both
sides validate, every call has a worker task, and a reply carries either the answer's JSON
(served as it is) or the error the worker met (raised again as the same kind of error)."""

from __future__ import annotations

import pytest

from service.core.errors import (
    DamagedResults,
    InvalidRequest,
    NotFound,
    ServiceError,
    TooManyRequests,
    Unavailable,
)
from service.core.protocol import (
    CALLS,
    FIT_TASK,
    Call,
    CompareCall,
    DescribeCall,
    DrawsCall,
    FitRef,
    GroupsCall,
    LooCall,
    PlotCall,
    PpcCall,
    PredictCall,
    SummaryCall,
    decode_reply,
    encode_answer,
    encode_error,
)
from service.core.schemas import Interval, Summary
from tests.unit.test_job_store import spec


def examples() -> list[Call]:
    fitted = {"fit_id": "a" * 32, "revision": "2026-11-30T00:00:00+00:00"}
    return [
        PredictCall(
            **fitted,
            n_rows=2,
            columns={"g": ["a", "b"], "x": [1.0, 2]},
            kind="mean",
            interval="hdi",
            prob=0.9,
            seed=3,
        ),
        SummaryCall(**fitted, interval="eti", prob=0.5),
        GroupsCall(**fitted, factor="school", interval="hdi", prob=0.8),
        DescribeCall(spec=spec()),
        LooCall(**fitted),
        PpcCall(**fitted, stat="q95", by="school", interval="eti", prob=0.9, seed=1),
        CompareCall(fits=(FitRef(**fitted), FitRef(fit_id="b" * 32, revision="r"))),
        PlotCall(**fitted, kind="caterpillar", format="svg", factor="school", prob=0.9, page=2),
        DrawsCall(
            **fitted,
            format="parquet",
            var=("sigma",),
            thin=2,
            layout="long",
            groups=True,
            sample_stats=True,
        ),
    ]


def test_every_call_survives_the_trip_to_the_worker() -> None:
    for call in examples():
        travelled = type(call).model_validate(call.model_dump(mode="json"))
        assert travelled == call


def test_every_call_has_its_own_task_on_the_worker() -> None:
    from worker.celery_app import app
    from worker.tasks import fit  # noqa: F401  (registers the tasks)

    names = [call.task for call in CALLS]
    assert len(set(names)) == len(names) == len(examples())
    assert {FIT_TASK, *names} <= set(app.tasks)


def test_an_answer_arrives_as_the_json_the_worker_built() -> None:
    summary = Summary(fit_id="a" * 32, interval=Interval(kind="hdi", prob=0.94), parameters=[])
    assert decode_reply(encode_answer(summary)) == summary.model_dump_json().encode()


@pytest.mark.parametrize(
    ("met", "raised"),
    [
        (InvalidRequest.one("data.school", "expects text"), InvalidRequest),
        (NotFound("no such fit"), NotFound),
        (DamagedResults("the fit's stored posterior is damaged"), DamagedResults),
        (Unavailable("the worker failed to answer"), Unavailable),
        (TooManyRequests("busy"), Unavailable),
    ],
)
def test_an_error_the_worker_met_is_raised_again_in_the_api(
    met: ServiceError, raised: type[ServiceError]
) -> None:
    with pytest.raises(raised) as caught:
        decode_reply(encode_error(met))
    assert caught.value.detail == met.detail
    if isinstance(met, InvalidRequest):
        assert isinstance(caught.value, InvalidRequest)
        assert caught.value.errors == met.errors


def test_a_reply_that_is_neither_is_an_outage_not_a_crash() -> None:
    with pytest.raises(Unavailable):
        decode_reply(b"garbage")
