"""Named models on a real Redis: the registry's atomic steps (promote, rollback, delete, the
fit-in-use check a fit's deletion makes), retention, and the ``/v1/models`` routes over them
(a fake dispatcher answers predictions, naming the fit it was asked about)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.models import with_model
from service.api.reconciler import reconcile_once
from service.api.security import key_digest
from service.core.artifacts import DIAGNOSTICS_FILE, Artifacts
from service.core.errors import InvalidRequest, NotFound, NotReady
from service.core.jobs import JobStore, new_fit_id
from service.core.models import (
    MAX_EVENTS,
    ModelConflict,
    ModelRegistry,
    Promotion,
    check_name,
    promoter,
)
from service.core.protocol import PredictCall
from service.core.schemas import FitSpec, FitStatus, ModelRef, ResolvedSampler
from service.core.settings import Settings
from tests.conftest import clean_redis, redis_url
from tests.support.files import fit_folder

OWNER, OTHER = "a" * 64, "b" * 64
RETENTION_S = 3600


@pytest.fixture
def store() -> JobStore:
    return JobStore(clean_redis(redis_url(14)), retention_s=RETENTION_S)


@pytest.fixture
def registry(store: JobStore) -> ModelRegistry:
    return ModelRegistry(store)


def spec() -> FitSpec:
    sampler = ResolvedSampler(draws=10, tune=10, chains=1, seed=1, target_accept=0.8, method="x")
    return FitSpec(
        formula="y ~ (1 | g)",
        family="gaussian",
        link="identity",
        columns={"y": [1.0, 2.0], "g": [1, 2]},
        sampler=sampler,
    )


def succeeded(store: JobStore, owner: str = OWNER, status: FitStatus = FitStatus.SUCCEEDED) -> str:
    """A fit of ``owner`` that ended with ``status``."""
    fit_id = new_fit_id()
    assert store.create(fit_id, spec(), owner=owner)
    if status is not FitStatus.QUEUED:
        store.start_attempt(fit_id)
        assert store.finish(fit_id, status) is status
    return fit_id


def promotion(fit_id: str, **fields: Any) -> Promotion:
    return Promotion(
        fit_id=fit_id, formula="y ~ (1 | g)", family="gaussian", verdict="pass", **fields
    )


# ------------------------------------------------------------------------------ registry


def test_promotions_number_versions_and_promoting_the_current_fit_changes_nothing(
    store: JobStore, registry: ModelRegistry
) -> None:
    first, second = succeeded(store), succeeded(store)
    assert registry.promote(OWNER, "radon", promotion(first, note="baseline")) == (1, True)
    assert registry.promote(OWNER, "radon", promotion(second)) == (2, True)
    assert registry.promote(OWNER, "radon", promotion(second)) == (2, False)
    model = registry.get(OWNER, "radon")
    assert (model.version, model.fit_id, model.formula) == (2, second, "y ~ (1 | g)")
    assert [(v.version, v.fit_id, v.note) for v in model.versions] == [
        (1, first, "baseline"),
        (2, second, None),
    ]
    assert [(e.action, e.version, e.from_version) for e in model.history] == [
        ("promote", 1, None),
        ("promote", 2, 1),
    ]
    assert {v.promoted_by for v in model.versions} == {OWNER[:12]}
    assert model.links["predictions"] == "/v1/models/radon/predictions"


def test_a_rollback_moves_the_current_version_as_a_new_event_and_rewrites_none(
    store: JobStore, registry: ModelRegistry
) -> None:
    fits = [succeeded(store) for _ in range(3)]
    for fit_id in fits:
        registry.promote(OWNER, "m", promotion(fit_id))
    assert registry.rollback(OWNER, "m") == (2, True)  # default: the previous version
    assert registry.current(OWNER, "m").fit_id == fits[1]
    assert registry.rollback(OWNER, "m", to_version=3) == (3, True)  # forward again
    assert registry.rollback(OWNER, "m", to_version=3) == (3, False)  # already current
    assert registry.rollback(OWNER, "m", to_version=1) == (1, True)
    with pytest.raises(ModelConflict, match="no earlier version"):
        registry.rollback(OWNER, "m")
    with pytest.raises(InvalidRequest) as unknown:
        registry.rollback(OWNER, "m", to_version=4)
    assert unknown.value.errors[0].field == "to_version"
    model = registry.get(OWNER, "m")
    assert [v.fit_id for v in model.versions] == fits  # never rewritten
    assert [(e.action, e.from_version, e.version, e.fit_id) for e in model.history[3:]] == [
        ("rollback", 3, 2, fits[1]),
        ("rollback", 2, 3, fits[2]),
        ("rollback", 3, 1, fits[0]),
    ]
    # a new promotion after a rollback is the next version number
    assert registry.promote(OWNER, "m", promotion(fits[1])) == (4, True)


def test_only_the_owners_succeeded_fits_are_promoted(
    store: JobStore, registry: ModelRegistry
) -> None:
    with pytest.raises(NotFound):
        registry.promote(OWNER, "m", promotion(succeeded(store, owner=OTHER)))
    with pytest.raises(NotFound):
        registry.promote(OWNER, "m", promotion(new_fit_id()))
    with pytest.raises(NotReady, match="queued"):
        registry.promote(OWNER, "m", promotion(succeeded(store, status=FitStatus.QUEUED)))
    with pytest.raises(NotReady, match="failed"):
        registry.promote(OWNER, "m", promotion(succeeded(store, status=FitStatus.FAILED)))
    with pytest.raises(NotFound):
        registry.get(OWNER, "m")  # nothing was created


def test_the_same_name_under_two_keys_is_two_models(
    store: JobStore, registry: ModelRegistry
) -> None:
    mine, theirs = succeeded(store), succeeded(store, owner=OTHER)
    registry.promote(OWNER, "m", promotion(mine))
    registry.promote(OTHER, "m", promotion(theirs))
    assert registry.current(OWNER, "m").fit_id == mine
    assert registry.current(OTHER, "m").fit_id == theirs
    registry.delete(OTHER, "m")
    assert registry.current(OWNER, "m").fit_id == mine
    assert [m.name for m in registry.list_models(OTHER, 0, 10)] == []


def test_models_are_listed_by_name_a_page_at_a_time(
    store: JobStore, registry: ModelRegistry
) -> None:
    fit_id = succeeded(store)
    for name in ("zeta", "alpha", "mid.v2", "Beta"):
        registry.promote(OWNER, name, promotion(fit_id))
    names = [m.name for m in registry.list_models(OWNER, 0, 10)]
    assert names == ["Beta", "alpha", "mid.v2", "zeta"]
    assert [m.name for m in registry.list_models(OWNER, 1, 2)] == ["alpha", "mid.v2"]
    assert store.models_using(fit_id) == ["Beta", "alpha", "mid.v2", "zeta"]


def test_a_fit_any_version_uses_cannot_be_deleted_until_its_models_are(
    store: JobStore, registry: ModelRegistry
) -> None:
    old, new = succeeded(store), succeeded(store)
    registry.promote(OWNER, "a", promotion(old))
    registry.promote(OWNER, "a", promotion(new))  # old is history now, still in use
    registry.promote(OWNER, "b", promotion(old))
    assert store.delete(old) == ["a", "b"]
    assert store.status(old) is FitStatus.SUCCEEDED
    registry.delete(OWNER, "a")
    assert store.delete(new) == []  # only "a" used it
    assert store.delete(old) == ["b"]
    registry.delete(OWNER, "b")
    assert store.delete(old) == []
    assert store.status(old) is None
    with pytest.raises(NotFound):
        registry.delete(OWNER, "b")


def test_a_used_fit_keeps_its_record_past_the_retention_until_its_model_is_deleted(
    store: JobStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    fit_id, unused = succeeded(store), succeeded(store)
    record = store.record_key(fit_id)
    assert 0 < store.redis.ttl(record) <= RETENTION_S  # a finished fit expires
    registry.promote(OWNER, "m", promotion(fit_id))
    assert store.redis.ttl(record) == -1  # promoted: kept
    artifacts = Artifacts(tmp_path)
    for each in (fit_id, unused):
        artifacts.write_spec(each, spec())
    store.redis.delete(store.record_key(unused))  # as if both had expired
    store.redis.delete(record)
    outcome = reconcile_once(store, artifacts, lambda _: None, queue="q", retention_s=0, now=2e9)
    assert outcome.swept == [unused]
    assert fit_folder(artifacts, fit_id).is_dir()  # a model names it: its files stay
    assert store.models_using(fit_id) == ["m"]


def test_deleting_a_model_gives_its_fits_their_retention_again(
    store: JobStore, registry: ModelRegistry
) -> None:
    shared, own = succeeded(store), succeeded(store)
    registry.promote(OWNER, "a", promotion(shared))
    registry.promote(OWNER, "a", promotion(own))
    registry.promote(OWNER, "b", promotion(shared))
    registry.delete(OWNER, "a")
    assert 0 < store.redis.ttl(store.record_key(own)) <= RETENTION_S
    assert store.redis.ttl(store.record_key(shared)) == -1  # "b" still uses it
    assert store.models_using(shared) == ["b"]


def race(registry: ModelRegistry, fit_id: str, name: str) -> tuple[bool, list[str]]:
    """Promote the fit under ``name`` and delete it at the same moment, from two threads:
    whether the promotion won, and the models the deletion found using the fit."""
    barrier = threading.Barrier(2)
    answers: dict[str, Any] = {}

    def promote() -> None:
        barrier.wait()
        try:
            answers["promote"] = registry.promote(OWNER, name, promotion(fit_id))
        except NotFound:
            answers["promote"] = None

    def delete() -> None:
        barrier.wait()
        answers["delete"] = registry.store.delete(fit_id)

    threads = [threading.Thread(target=promote), threading.Thread(target=delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers["promote"] is not None, answers["delete"]


def test_a_promotion_and_a_deletion_of_its_fit_never_both_win(
    store: JobStore, registry: ModelRegistry
) -> None:
    for round_ in range(40):
        fit_id = succeeded(store)
        promoted, users = race(registry, fit_id, f"m{round_}")
        assert users == ([f"m{round_}"] if promoted else [])  # refused iff the promotion won
        assert (store.status(fit_id) is not None) == promoted
        if promoted:
            assert registry.current(OWNER, f"m{round_}").fit_id == fit_id
        else:
            with pytest.raises(NotFound):
                registry.current(OWNER, f"m{round_}")


def test_the_current_version_and_its_fit_are_read_together_under_promotions(
    store: JobStore, registry: ModelRegistry
) -> None:
    a, b = succeeded(store), succeeded(store)
    registry.promote(OWNER, "m", promotion(a))
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            registry.promote(OWNER, "m", promotion(b))
            registry.rollback(OWNER, "m", to_version=1)

    thread = threading.Thread(target=flip)
    thread.start()
    try:
        seen = {(c.version, c.fit_id) for c in (registry.current(OWNER, "m") for _ in range(300))}
    finally:
        stop.set()
        thread.join()
    fits = {v.version: v.fit_id for v in registry.get(OWNER, "m").versions}
    assert all(fits[version] == fit_id for version, fit_id in seen)


def test_a_model_keeps_a_bounded_history(store: JobStore, registry: ModelRegistry) -> None:
    a, b = succeeded(store), succeeded(store)
    registry.promote(OWNER, "m", promotion(a))
    registry.promote(OWNER, "m", promotion(b))
    store.redis.rpush(
        registry._history(OWNER, "m"), *["{}"] * (MAX_EVENTS - 2)
    )  # as if 998 more changes had happened
    with pytest.raises(ModelConflict, match="the most one keeps"):
        registry.rollback(OWNER, "m")


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a/b", "a b", "x" * 65, "é", "validate"])
def test_names_that_cannot_be_model_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_name(name)
    assert refused.value.errors[0].field == "name"


def test_who_promoted_is_the_keys_digest_prefix_or_anonymous() -> None:
    assert promoter("") == "anonymous"
    assert promoter(key_digest("k")) == key_digest("k")[:12]


def test_the_model_is_spliced_into_the_workers_answer() -> None:
    ref = ModelRef(name="m", version=3, fit_id="f")
    spliced = json.loads(with_model(b'{"fit_id": "f", "rows": []}', ref))
    assert spliced == {
        "model": {"name": "m", "version": 3, "fit_id": "f"},
        "fit_id": "f",
        "rows": [],
    }
    assert json.loads(with_model(b"{ }", ref)) == {"model": ref.model_dump()}


# -------------------------------------------------------------------------------- routes

KEY, OTHER_KEY = "models-key-1", "models-key-2"


class Predicting:
    """Answers a prediction as a worker would, naming the fit it was asked about, and any
    other call with the call's name (and records the calls)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def call(self, call: Any, owner: str = "") -> bytes:
        self.calls.append(call)
        if not isinstance(call, PredictCall):
            return json.dumps({"call": type(call).__name__}).encode()
        rows = [{"row": 0, "mean": 1.0, "sd": 0.1, "lower": 0.9, "upper": 1.1, "groups": {}}]
        answer = {
            "fit_id": call.fit_id,
            "kind": call.kind,
            "interval": {"kind": "hdi", "prob": 0.94},
        }
        return json.dumps(answer | {"rows": rows}).encode()

    def enqueue_fit(self, fit_id: str) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Predicting]]:
    url = redis_url(14)
    clean_redis(url)
    settings = Settings(
        redis_url=url,
        data_dir=tmp_path,
        api_key_hashes=[key_digest(KEY), key_digest(OTHER_KEY)],
    )
    app = create_app(settings)
    dispatcher = Predicting()
    app.state.services.dispatcher = dispatcher
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        yield client, dispatcher


def stored_fit(client: TestClient, verdict: str = "pass", owner: str = KEY) -> str:
    """A succeeded fit of the key ``owner`` with its spec and a diagnostics file."""
    services = client.app.state.services  # type: ignore[attr-defined]
    fit_id = succeeded(services.store, owner=key_digest(owner))
    services.artifacts.write_spec(fit_id, spec())
    warnings = ["Bulk effective sample size is only 12"] if verdict == "fail" else []
    services.artifacts.write_json(
        fit_id, DIAGNOSTICS_FILE, {"fit_id": fit_id, "verdict": verdict, "warnings": warnings}
    )
    return fit_id


def test_put_creates_the_model_then_promotes_and_answers_the_model(
    api: tuple[TestClient, Predicting],
) -> None:
    client, _ = api
    first, second = stored_fit(client), stored_fit(client)
    created = client.put("/v1/models/radon", json={"fit_id": first, "note": "v1"})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v1/models/radon"
    assert created.json()["version"] == 1
    promoted = client.put("/v1/models/radon", json={"fit_id": second})
    assert promoted.status_code == 200
    assert (promoted.json()["version"], promoted.json()["fit_id"]) == (2, second)
    again = client.put("/v1/models/radon", json={"fit_id": second})
    assert again.json() == promoted.json()  # idempotent
    listed = client.get("/v1/models").json()
    assert [(m["name"], m["version"], m["fit_id"]) for m in listed] == [("radon", 2, second)]
    model = client.get("/v1/models/radon").json()
    assert [v["note"] for v in model["versions"]] == ["v1", None]
    assert model["versions"][0]["promoted_by"] == key_digest(KEY)[:12]


def test_a_fit_whose_verdict_is_fail_needs_force_which_is_recorded(
    api: tuple[TestClient, Predicting],
) -> None:
    client, _ = api
    failing = stored_fit(client, verdict="fail")
    refused = client.put("/v1/models/m", json={"fit_id": failing})
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert "verdict is fail" in refused.json()["detail"]
    assert "force" in refused.json()["detail"]
    assert client.get("/v1/models/m").status_code == 404
    forced = client.put("/v1/models/m", json={"fit_id": failing, "force": True, "note": "demo"})
    assert forced.status_code == 201
    (version,) = forced.json()["versions"]
    assert (version["forced"], version["verdict"], version["note"]) == (True, "fail", "demo")
    assert forced.json()["history"][0]["forced"] is True


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/v1/models/validate", "PUT", {"fit_id": "0" * 32}),
        ("/v1/models/validate", "GET", None),
        ("/v1/models/-bad", "PUT", {"fit_id": "0" * 32}),
        ("/v1/models/a%20b/predictions", "POST", {"data": {"g": [1]}}),
    ],
)
def test_a_name_that_cannot_be_a_model_is_a_422_naming_name(
    api: tuple[TestClient, Predicting], path: str, method: str, body: Any
) -> None:
    client, _ = api
    response = client.request(method, path, json=body)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["name"]


def test_the_dry_run_keeps_its_url(api: tuple[TestClient, Predicting]) -> None:
    client, _ = api
    dry_run = {"data": {"y": [1.0, 2.0], "g": [1, 2]}, "formula": "y ~ (1 | g)"}
    response = client.post("/v1/models/validate", json=dry_run)
    assert response.json() == {"call": "DescribeCall"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"fit_id": "0" * 32}, 404),
        ({"fit_id": "not-a-fit"}, 404),
        ({"fit_id": "x", "colour": "blue"}, 422),
        ({"fit_id": "x", "note": "n" * 501}, 422),
        ({"fit_id": "x", "force": "yes"}, 422),
    ],
)
def test_a_promotion_of_no_fit_or_with_a_bad_body_is_refused(
    api: tuple[TestClient, Predicting], body: dict[str, Any], status: int
) -> None:
    client, _ = api
    assert client.put("/v1/models/m", json=body).status_code == status


def test_an_unfinished_fit_is_a_409(api: tuple[TestClient, Predicting]) -> None:
    client, _ = api
    store = client.app.state.services.store  # type: ignore[attr-defined]
    queued = succeeded(store, key_digest(KEY), FitStatus.QUEUED)
    response = client.put("/v1/models/m", json={"fit_id": queued})
    assert response.status_code == 409 and "queued" in response.json()["detail"]


def test_predictions_name_the_version_and_fit_that_answered(
    api: tuple[TestClient, Predicting],
) -> None:
    client, dispatcher = api
    first, second = stored_fit(client), stored_fit(client)
    client.put("/v1/models/m", json={"fit_id": first})
    client.put("/v1/models/m", json={"fit_id": second})
    response = client.post(
        "/v1/models/m/predictions", json={"data": {"g": [1]}, "kind": "response"}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == {"name": "m", "version": 2, "fit_id": second}
    assert answer["fit_id"] == second and answer["kind"] == "response"
    assert (response.headers["x-model-version"], response.headers["x-fit-id"]) == ("2", second)
    (call,) = dispatcher.calls
    assert call.fit_id == second and call.columns == {"g": [1]}
    rolled = client.post("/v1/models/m/rollback")  # no body: the previous version
    assert rolled.status_code == 200 and rolled.json()["version"] == 1
    again = client.post("/v1/models/m/predictions", json={"data": {"g": [1]}})
    assert again.json()["model"] == {"name": "m", "version": 1, "fit_id": first}


def test_prediction_rows_are_checked_against_the_current_fits_spec(
    api: tuple[TestClient, Predicting],
) -> None:
    client, dispatcher = api
    client.put("/v1/models/m", json={"fit_id": stored_fit(client)})
    response = client.post("/v1/models/m/predictions", json={"data": {"h": [1]}})
    assert response.status_code == 422
    assert "lacks the columns ['g']" in response.json()["detail"]
    assert dispatcher.calls == []


def test_rollback_with_nothing_before_is_a_409_and_to_a_version_never_made_a_422(
    api: tuple[TestClient, Predicting],
) -> None:
    client, _ = api
    client.put("/v1/models/m", json={"fit_id": stored_fit(client)})
    nothing = client.post("/v1/models/m/rollback", json={})
    assert nothing.status_code == 409 and "no earlier version" in nothing.json()["detail"]
    unknown = client.post("/v1/models/m/rollback", json={"to_version": 7})
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "to_version"
    assert client.post("/v1/models/none/rollback").status_code == 404


def test_deleting_a_fit_a_model_uses_is_a_409_naming_the_model(
    api: tuple[TestClient, Predicting],
) -> None:
    client, _ = api
    fit_id = stored_fit(client)
    client.put("/v1/models/radon", json={"fit_id": fit_id})
    refused = client.delete(f"/v1/fits/{fit_id}")
    assert refused.status_code == 409
    assert "radon" in refused.json()["detail"]
    services = client.app.state.services  # type: ignore[attr-defined]
    assert fit_folder(services.artifacts, fit_id).is_dir()  # nothing was removed
    assert client.get(f"/v1/fits/{fit_id}").status_code == 200
    assert client.delete("/v1/models/radon").status_code == 204
    assert client.get("/v1/models/radon").status_code == 404
    assert client.delete(f"/v1/fits/{fit_id}").status_code == 204
    assert not fit_folder(services.artifacts, fit_id).exists()


def test_another_keys_models_and_fits_are_404(api: tuple[TestClient, Predicting]) -> None:
    client, _ = api
    mine, theirs = stored_fit(client), stored_fit(client, owner=OTHER_KEY)
    client.put("/v1/models/m", json={"fit_id": mine})
    other = {"X-API-Key": OTHER_KEY}
    assert client.get("/v1/models/m", headers=other).status_code == 404
    assert client.post("/v1/models/m/rollback", headers=other).status_code == 404
    assert client.delete("/v1/models/m", headers=other).status_code == 404
    predict = client.post("/v1/models/m/predictions", json={"data": {"g": [1]}}, headers=other)
    assert predict.status_code == 404
    assert client.get("/v1/models", headers=other).json() == []
    # my key cannot promote their fit; their key may use the same name for its own model
    assert client.put("/v1/models/m", json={"fit_id": theirs}).status_code == 404
    theirs_model = client.put("/v1/models/m", json={"fit_id": theirs}, headers=other)
    assert theirs_model.status_code == 201
    assert client.get("/v1/models/m").json()["fit_id"] == mine
