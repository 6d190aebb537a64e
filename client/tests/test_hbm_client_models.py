"""Named models through ``client.models``: what each call sends (the fit's id from a handle or
a string, force and note, a rollback's optional version, a name as one path segment), what
it returns (typed models that keep new fields; predictions naming the version and fit that
answered), refusals as exceptions, and retries only where a call is safe to repeat."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from conftest import Clock, Service, problem, record

from hbm_client import (
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    ModelPredictions,
    NamedModel,
    NotFound,
)

URL = "http://hbm.test"
INTERVAL = {"kind": "hdi", "prob": 0.94}


def version(number: int, fit_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "version": number,
        "fit_id": fit_id,
        "formula": "score ~ (1 | school)",
        "family": "gaussian",
        "verdict": "pass",
        "forced": False,
        "note": None,
        "promoted_by": "0123456789ab",
        "promoted_at": "2026-01-01T00:00:00Z",
        **fields,
    }


def event(action: str, number: int, fit_id: str, before: int | None) -> dict[str, Any]:
    return {
        "action": action,
        "version": number,
        "fit_id": fit_id,
        "from_version": before,
        "forced": False,
        "note": None,
        "by": "0123456789ab",
        "at": "2026-01-01T00:00:00Z",
    }


def model(current: int = 2, name: str = "radon") -> dict[str, Any]:
    """A model of two versions (f1 then f2), ``current`` being served."""
    fit_id = f"f{current}"
    return {
        "name": name,
        "version": current,
        "fit_id": fit_id,
        "formula": "score ~ (1 | school)",
        "family": "gaussian",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-02T00:00:00Z",
        "versions": [version(1, "f1", note="baseline"), version(2, "f2")],
        "history": [event("promote", 1, "f1", None), event("promote", 2, "f2", 1)],
        "links": {"self": f"/v1/models/{name}"},
        "a_field_from_a_newer_service": True,
    }


def predictions(fit_id: str, number: int) -> dict[str, Any]:
    row = {"row": 0, "mean": 1.0, "sd": 0.5, "lower": 0.1, "upper": 1.9, "groups": {}}
    return {
        "model": {"name": "radon", "version": number, "fit_id": fit_id},
        "fit_id": fit_id,
        "kind": "mean",
        "interval": INTERVAL,
        "rows": [row],
    }


def client(service: Service) -> Client:
    return Client(URL, transport=service.transport())


def sent_body(service: Service, method: str, path: str) -> Any:
    return json.loads(service.sent(method, path)[-1].content)


def test_promote_sends_the_fits_id_force_and_note_and_returns_the_model(
    service: Service,
) -> None:
    service.on("GET", "/v1/fits/f2", record(id="f2"))
    service.on("PUT", "/v1/models/radon", model())
    hbm = client(service)
    promoted = hbm.models.promote("radon", hbm.get_fit("f2"), note="more data")
    assert isinstance(promoted, NamedModel)
    assert (promoted.version, promoted.fit_id) == (2, "f2")
    assert promoted.current.fit_id == "f2" and promoted.versions[0].note == "baseline"
    assert [e.from_version for e in promoted.history] == [None, 1]
    assert sent_body(service, "PUT", "/v1/models/radon") == {
        "fit_id": "f2",
        "force": False,
        "note": "more data",
    }
    hbm.models.promote("radon", "f1", force=True)  # an id does as well as a handle
    assert sent_body(service, "PUT", "/v1/models/radon") == {"fit_id": "f1", "force": True}


def test_a_fit_that_failed_its_diagnostics_raises_conflict_with_the_reason(
    service: Service,
) -> None:
    detail = "the fit's diagnostics verdict is fail (Bulk effective sample size is only 12)"
    service.on("PUT", "/v1/models/radon", problem(409, detail))
    with pytest.raises(Conflict) as raised:
        client(service).models.promote("radon", "f9")
    assert raised.value.status == 409 and "verdict is fail" in raised.value.detail


def test_get_and_list_read_the_models(service: Service) -> None:
    service.on("GET", "/v1/models/radon", model())
    listing = [{k: v for k, v in model().items() if k != "versions"}]
    service.on("GET", "/v1/models", httpx.Response(200, json=listing))
    hbm = client(service)
    assert hbm.models.get("radon").history[1].action == "promote"
    (listed,) = hbm.models.list(offset=20, limit=5)
    assert (listed.name, listed.version, listed.fit_id) == ("radon", 2, "f2")
    params = service.sent("GET", "/v1/models")[-1].url.params
    assert (params["offset"], params["limit"]) == ("20", "5")


def test_rollback_sends_the_version_only_when_given(service: Service) -> None:
    service.on("POST", "/v1/models/radon/rollback", model(current=1))
    hbm = client(service)
    assert hbm.models.rollback("radon").fit_id == "f1"
    assert sent_body(service, "POST", "/v1/models/radon/rollback") == {}
    hbm.models.rollback("radon", to_version=1)
    assert sent_body(service, "POST", "/v1/models/radon/rollback") == {"to_version": 1}


def test_a_rollback_is_not_sent_again_after_a_connection_error(
    service: Service, clock: Clock
) -> None:
    service.on("POST", "/v1/models/radon/rollback", httpx.ConnectError("reset"))
    with pytest.raises(httpx.ConnectError):
        client(service).models.rollback("radon")
    assert len(service.sent("POST", "/v1/models/radon/rollback")) == 1  # it may have landed
    assert clock.sleeps == []


def test_a_promotion_is_sent_again_after_a_connection_error(service: Service, clock: Clock) -> None:
    service.on("PUT", "/v1/models/radon", httpx.ConnectError("reset"), model())
    assert client(service).models.promote("radon", "f2").version == 2
    assert len(service.sent("PUT", "/v1/models/radon")) == 2  # the same PUT: idempotent


def test_predict_says_which_version_and_fit_answered(service: Service) -> None:
    service.on("POST", "/v1/models/radon/predictions", predictions("f2", 2))
    answer = client(service).models.predict("radon", {"school": [3]}, kind="response", seed=1)
    assert isinstance(answer, ModelPredictions)
    assert (answer.model.version, answer.model.fit_id, answer.fit_id) == (2, "f2", "f2")
    assert sent_body(service, "POST", "/v1/models/radon/predictions") == {
        "data": {"school": [3]},
        "kind": "response",
        "seed": 1,
    }


def test_a_name_is_sent_as_one_path_segment(service: Service) -> None:
    service.on("GET", "/v1/models/a/b", problem(422, "name: must be ...", errors=[]))
    with pytest.raises(InvalidRequest):
        client(service).models.get("a/b")
    assert service.requests[-1].url.raw_path == b"/v1/models/a%2Fb"


def test_delete_forgets_the_model_and_an_unknown_one_is_not_found(service: Service) -> None:
    service.on("DELETE", "/v1/models/radon", httpx.Response(204))
    service.on("DELETE", "/v1/models/none", problem(404, "there is no model 'none'"))
    hbm = client(service)
    hbm.models.delete("radon")
    assert len(service.sent("DELETE", "/v1/models/radon")) == 1
    with pytest.raises(NotFound):
        hbm.models.delete("none")


def test_the_async_client_has_the_same_models(service: Service) -> None:
    service.on("PUT", "/v1/models/radon", model())
    service.on("GET", "/v1/models/radon", model())
    service.on("GET", "/v1/models", httpx.Response(200, json=[model()]))
    service.on("POST", "/v1/models/radon/rollback", model(current=1))
    service.on("POST", "/v1/models/radon/predictions", predictions("f1", 1))
    service.on("DELETE", "/v1/models/radon", httpx.Response(204))

    async def session() -> None:
        async with AsyncClient(URL, transport=service.async_transport()) as hbm:
            assert (await hbm.models.promote("radon", "f2", note="n")).version == 2
            assert (await hbm.models.get("radon")).fit_id == "f2"
            assert [m.name for m in await hbm.models.list()] == ["radon"]
            assert (await hbm.models.rollback("radon")).version == 1
            answer = await hbm.models.predict("radon", [{"school": 3}])
            assert answer.model.fit_id == "f1"
            await hbm.models.delete("radon")

    asyncio.run(session())
    assert [r.method for r in service.requests] == ["PUT", "GET", "GET", "POST", "POST", "DELETE"]
