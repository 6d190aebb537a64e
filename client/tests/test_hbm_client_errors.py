"""Errors are exceptions carrying the service's problem details: one class per status a
caller handles differently, FitFailed for a fit that ended failed."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import Clock, Service, problem, record

from hbm_client import (
    AsyncClient,
    Client,
    Conflict,
    FitFailed,
    HbmError,
    InvalidRequest,
    NotFound,
    NotReady,
    Unauthorized,
)

URL = "http://hbm.test"


def test_a_404_is_not_found_with_the_services_words(service: Service) -> None:
    service.on("GET", "/v1/fits/nope", problem(404, "there is no fit 'nope'"))
    with pytest.raises(NotFound) as raised:
        Client(URL, transport=service.transport()).get_fit("nope")
    assert (raised.value.status, raised.value.title) == (404, "title 404")
    assert raised.value.detail == "there is no fit 'nope'"
    assert str(raised.value) == "404 title 404: there is no fit 'nope'"


def test_results_of_a_fit_not_yet_succeeded_are_not_ready(service: Service) -> None:
    service.on("GET", "/v1/fits/f1", record("running"))
    service.on("GET", "/v1/fits/f1/summary", problem(409, "the fit is running"))
    fit = Client(URL, transport=service.transport()).get_fit("f1")
    with pytest.raises(NotReady) as raised:
        fit.summary()
    assert Conflict is NotReady and raised.value.status == 409


def test_a_422_names_each_refused_field(service: Service) -> None:
    errors = [
        {"field": "formula", "message": "'klass' is not a column of the data"},
        {"field": "sampler.draws", "message": "over 40000 draws x chains"},
    ]
    service.on("POST", "/v1/fits", problem(422, "formula: ...", errors=errors))
    with pytest.raises(InvalidRequest) as raised:
        Client(URL, transport=service.transport()).fit({"y": [1]}, "y ~ (1 | klass)")
    assert raised.value.fields == ["formula", "sampler.draws"]
    assert raised.value.errors[0].message == "'klass' is not a column of the data"
    assert len(service.requests) == 1


def test_a_missing_key_is_unauthorized_and_the_key_is_sent_as_x_api_key(
    service: Service,
) -> None:
    service.on("GET", "/v1/fits/f1", problem(401, "send an API key in the X-API-Key header"))
    with pytest.raises(Unauthorized):
        Client(URL, api_key="k-123", transport=service.transport()).get_fit("f1")
    assert service.requests[0].headers["X-API-Key"] == "k-123"


def test_an_answer_that_is_not_the_services_is_an_hbm_error_with_its_status(
    service: Service,
) -> None:
    service.on("GET", "/v1/fits/f1", httpx.Response(502, text="<html>Bad gateway</html>"))
    with pytest.raises(HbmError) as raised:
        Client(URL, transport=service.transport()).get_fit("f1")
    assert type(raised.value) is HbmError
    assert raised.value.status == 502 and raised.value.title == "Bad Gateway"
    assert "Bad gateway" in raised.value.detail


def test_waiting_on_a_fit_that_fails_raises_fit_failed_with_its_reason(
    service: Service, clock: Clock
) -> None:
    error = {"reason": "sampling_error", "message": "the sampler could not start"}
    service.on("POST", "/v1/fits", record("queued"))
    service.on("GET", "/v1/fits/f1", record("running"), record("failed", error=error))
    with pytest.raises(FitFailed) as raised:
        Client(URL, transport=service.transport()).fit({"y": [1.0]}, "y ~ 1", progress=False)
    failed = raised.value
    assert (failed.reason, failed.message) == ("sampling_error", "the sampler could not start")
    assert failed.status is None and failed.fit.status == "failed"
    assert "f1: sampling_error" in str(failed)


def test_a_fit_cancelled_while_waited_on_raises_fit_failed_too(
    service: Service, clock: Clock
) -> None:
    service.on("GET", "/v1/fits/f1", record("cancelled"))

    async def wait() -> None:
        async with AsyncClient(URL, transport=service.async_transport()) as hbm:
            await (await hbm.get_fit("f1")).wait(progress=False)

    with pytest.raises(FitFailed, match="cancelled"):
        asyncio.run(wait())
