"""Named models against a real deployment with API keys (real API, workers and Redis): a fit
is promoted under a name and served by it; a fit whose diagnostics fail needs ``force``,
which the history records; a rollback is a new event; predictions say which version and fit
answered, and under promotions racing with them every answer's numbers are those of the fit
it names; a fit a model uses cannot be deleted; another key sees none of it.

The two served fits are the seed study's shape with the scores shifted by +100 and -100, so
that any prediction tells by its value alone which of the two fits computed it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import QUICK, Deployment, deployed, wait_for_fit
from tests.e2e.test_events import digest

pytestmark = pytest.mark.e2e

KEY, OTHER_KEY = "models-key-1", "models-key-2"
#: Very few draws after very little warm-up: bulk ESS under 50 per chain, verdict fail.
TOO_SHORT = {"draws": 20, "tune": 20, "chains": 2}
NEW_ROWS = {"school": [3, 7, 101]}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from deployed(
        tmp_path_factory,
        11,
        HBM_API_KEY_HASHES=json.dumps([digest(KEY), digest(OTHER_KEY)]),
        HBM_CALLS_PER_MINUTE="5000",  # the race below makes up to 200 predictions
    )


@pytest.fixture(scope="module")
def client(keyed: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.base_url, timeout=120, headers={"X-API-Key": KEY}) as http:
        yield http


@pytest.fixture(scope="module")
def other(keyed: Deployment) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": OTHER_KEY}
    with httpx.Client(base_url=keyed.base_url, timeout=120, headers=headers) as http:
        yield http


def shifted(records: list[dict[str, Any]], by: float) -> list[dict[str, Any]]:
    return [{"school": r["school"], "score": r["score"] + by} for r in records]


def fit(http: httpx.Client, records: list[dict[str, Any]], sampler: dict[str, int]) -> str:
    body = {"data": records, "formula": "score ~ (1 | school)", "sampler": sampler}
    response = http.post("/v1/fits", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def fits(
    client: httpx.Client, other: httpx.Client, seed_records: list[dict[str, Any]]
) -> dict[str, str]:
    """Four fits, sampled together: high (+100) and low (-100) of this key, one too short
    to pass its diagnostics, and one of the other key."""
    ids = {
        "high": fit(client, shifted(seed_records, 100), {**QUICK, "seed": 1}),
        "low": fit(client, shifted(seed_records, -100), {**QUICK, "seed": 2}),
        "short": fit(client, seed_records, {**TOO_SHORT, "seed": 3}),
    }
    theirs = fit(other, seed_records, {**QUICK, "seed": 4})
    for fit_id in ids.values():
        assert wait_for_fit(client, f"/v1/fits/{fit_id}")["status"] == "succeeded"
    assert wait_for_fit(other, f"/v1/fits/{theirs}")["status"] == "succeeded"
    return ids | {"theirs": theirs}


def put(http: httpx.Client, name: str, fit_id: str, **fields: Any) -> httpx.Response:
    return http.put(f"/v1/models/{name}", json={"fit_id": fit_id, **fields})


def side(answer: dict[str, Any]) -> str:
    """Which of the two shifted fits computed these predictions, from their values."""
    means = [row["mean"] for row in answer["rows"]]
    assert all(m > 50 for m in means) or all(m < -50 for m in means), means
    return "high" if means[0] > 0 else "low"


def test_a_promoted_fit_is_served_under_its_name(
    client: httpx.Client, fits: dict[str, str]
) -> None:
    created = put(client, "seed", fits["high"], note="first")
    assert created.status_code == 201, created.text
    model = created.json()
    assert (model["name"], model["version"], model["fit_id"]) == ("seed", 1, fits["high"])
    assert model["formula"] == "score ~ (1 | school)"
    (version,) = model["versions"]
    assert version["verdict"] in ("pass", "warn") and not version["forced"]
    assert version["note"] == "first"
    assert version["promoted_by"] == digest(KEY)[:12]
    assert client.get("/v1/models/seed").json() == model
    listed = client.get("/v1/models").json()
    assert {(m["name"], m["version"], m["fit_id"]) for m in listed} >= {("seed", 1, fits["high"])}
    again = put(client, "seed", fits["high"])  # the current fit: nothing changes
    assert again.status_code == 200 and again.json() == model


def test_a_fit_whose_diagnostics_fail_is_refused_unless_forced_and_force_is_recorded(
    client: httpx.Client, fits: dict[str, str]
) -> None:
    diagnostics = client.get(f"/v1/fits/{fits['short']}/diagnostics").json()
    assert diagnostics["verdict"] == "fail", diagnostics["warnings"]
    refused = put(client, "short", fits["short"])
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert "verdict is fail" in refused.json()["detail"]
    assert client.get("/v1/models/short").status_code == 404
    forced = put(client, "short", fits["short"], force=True, note="a demo, knowingly")
    assert forced.status_code == 201
    (version,) = forced.json()["versions"]
    assert (version["forced"], version["verdict"]) == (True, "fail")
    assert forced.json()["history"][0]["note"] == "a demo, knowingly"


def test_a_rollback_makes_an_earlier_version_current_as_a_new_event(
    client: httpx.Client, fits: dict[str, str]
) -> None:
    put(client, "rolling", fits["high"])
    assert put(client, "rolling", fits["low"]).json()["version"] == 2
    rolled = client.post("/v1/models/rolling/rollback")
    assert rolled.status_code == 200
    model = rolled.json()
    assert (model["version"], model["fit_id"]) == (1, fits["high"])
    assert [v["fit_id"] for v in model["versions"]] == [fits["high"], fits["low"]]
    assert [(e["action"], e["from_version"], e["version"]) for e in model["history"]] == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("rollback", 2, 1),
    ]
    nothing = client.post("/v1/models/rolling/rollback")
    assert nothing.status_code == 409
    forward = client.post("/v1/models/rolling/rollback", json={"to_version": 2})
    assert (forward.json()["version"], forward.json()["fit_id"]) == (2, fits["low"])


def test_predictions_say_which_version_and_fit_answered(
    client: httpx.Client, fits: dict[str, str]
) -> None:
    put(client, "served", fits["high"])
    put(client, "served", fits["low"])
    response = client.post("/v1/models/served/predictions", json={"data": NEW_ROWS})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == {"name": "served", "version": 2, "fit_id": fits["low"]}
    assert answer["fit_id"] == fits["low"] and side(answer) == "low"
    assert [r["groups"]["school"] for r in answer["rows"]] == ["seen", "seen", "new"]
    assert response.headers["x-model-version"] == "2"
    assert response.headers["x-fit-id"] == fits["low"]
    # the same body to the fit itself gives the same numbers (same fit, same seed)
    direct = client.post(f"/v1/fits/{fits['low']}/predictions", json={"data": NEW_ROWS, "seed": 5})
    via_model = client.post("/v1/models/served/predictions", json={"data": NEW_ROWS, "seed": 5})
    assert via_model.json()["rows"] == direct.json()["rows"]


def test_promotions_racing_with_predictions_never_mix_fits(
    client: httpx.Client, fits: dict[str, str]
) -> None:
    put(client, "racing", fits["high"])
    put(client, "racing", fits["low"])
    stop = threading.Event()
    promotions: list[int] = []  # each promotion's status

    def flip() -> None:  # promote high, then low, ... (each a new version) until told
        while not stop.is_set():
            target = fits["high"] if len(promotions) % 2 == 0 else fits["low"]
            promotions.append(put(client, "racing", target).status_code)

    def predict(_: int) -> dict[str, Any]:
        response = client.post("/v1/models/racing/predictions", json={"data": NEW_ROWS})
        assert response.status_code == 200, response.text
        assert response.headers["x-fit-id"] == response.json()["model"]["fit_id"]
        return dict(response.json())

    flipper = threading.Thread(target=flip)
    flipper.start()
    answers: list[dict[str, Any]] = []
    try:
        with ThreadPoolExecutor(4) as pool:
            while len(answers) < 200:
                answers += pool.map(predict, range(8))
                served = {a["model"]["fit_id"] for a in answers}
                if len(served) == 2 and len(answers) >= 40:
                    break
    finally:
        stop.set()
        flipper.join()
    by_fit = {fits["high"]: "high", fits["low"]: "low"}
    for answer in answers:
        assert answer["fit_id"] == answer["model"]["fit_id"]
        assert side(answer) == by_fit[answer["model"]["fit_id"]]  # the numbers of that fit
    assert {a["model"]["fit_id"] for a in answers} == set(by_fit), "the fits never switched"
    assert set(promotions) == {200}
    versions = client.get("/v1/models/racing").json()["versions"]
    fit_of = {v["version"]: v["fit_id"] for v in versions}
    assert all(fit_of[a["model"]["version"]] == a["model"]["fit_id"] for a in answers)
    print(f"{len(answers)} predictions during {len(promotions)} promotions")


def test_a_fit_a_model_uses_cannot_be_deleted_until_the_model_is(
    client: httpx.Client, fits: dict[str, str]
) -> None:
    put(client, "keeper", fits["short"], force=True)
    refused = client.delete(f"/v1/fits/{fits['short']}")
    assert refused.status_code == 409
    assert "keeper" in refused.json()["detail"] and "short" in refused.json()["detail"]
    assert client.get(f"/v1/fits/{fits['short']}/summary").status_code == 200
    assert client.delete("/v1/models/keeper").status_code == 204
    assert client.delete("/v1/models/short").status_code == 204
    assert client.get("/v1/models/keeper").status_code == 404
    assert client.get(f"/v1/fits/{fits['short']}").status_code == 200  # the fit stays
    assert client.delete(f"/v1/fits/{fits['short']}").status_code == 204


def test_another_keys_models_are_404_and_a_name_is_per_key(
    client: httpx.Client, other: httpx.Client, fits: dict[str, str]
) -> None:
    put(client, "shared-name", fits["high"])
    assert other.get("/v1/models/shared-name").status_code == 404
    rows = {"data": NEW_ROWS}
    assert other.post("/v1/models/shared-name/predictions", json=rows).status_code == 404
    assert other.post("/v1/models/shared-name/rollback").status_code == 404
    assert other.delete("/v1/models/shared-name").status_code == 404
    assert put(other, "mine", fits["high"]).status_code == 404  # not their fit
    assert "shared-name" not in {m["name"] for m in other.get("/v1/models").json()}
    theirs = put(other, "shared-name", fits["theirs"])
    assert theirs.status_code == 201 and theirs.json()["version"] == 1
    assert client.get("/v1/models/shared-name").json()["fit_id"] == fits["high"]
    assert other.get("/v1/models/shared-name").json()["fit_id"] == fits["theirs"]


def test_validate_is_the_dry_run_not_a_model(client: httpx.Client, fits: dict[str, str]) -> None:
    refused = put(client, "validate", fits["high"])
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["name"]
    dry_run = {"data": {"g": [1, 1, 2, 2], "y": [0.1, 0.3, 1.2, 0.9]}, "formula": "y ~ (1 | g)"}
    described = client.post("/v1/models/validate", json=dry_run)
    assert described.status_code == 200 and described.json()["n_obs"] == 4
