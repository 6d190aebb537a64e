"""The API validates and enqueues: what it accepts, what it refuses (and how), what it
answers before a fit has results. A recording dispatcher stands in for Celery here; the
end-to-end tests use real workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from service.api.app import create_app
from service.core.settings import Settings
from tests.conftest import clean_redis, redis_url

PROBLEM = "application/problem+json"


class RecordingDispatcher:
    """Remembers what would have been queued."""

    def __init__(self) -> None:
        self.fits: list[str] = []

    def enqueue_fit(self, fit_id: str) -> None:
        self.fits.append(fit_id)

    async def call(self, call: Any, owner: str = "") -> bytes:
        raise AssertionError("no synchronous call expected in these tests")

    async def close(self) -> None:
        pass


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def client(tmp_path: Path, dispatcher: RecordingDispatcher) -> Iterator[TestClient]:
    url = redis_url(14)
    clean_redis(url)
    settings = Settings(
        redis_url=url,
        data_dir=tmp_path,
        max_rows=1000,
        max_draws=5000,
        max_draws_x_chains=10_000,
        max_design_bytes=1024**2,
    )
    app = create_app(settings)
    app.state.services.dispatcher = dispatcher
    with TestClient(app) as test_client:
        yield test_client


def app_client(tmp_path: Path, dispatcher: Any | None = None, **settings: Any) -> TestClient:
    """A test client of an app on an emptied Redis database 14, its dispatcher faked."""
    url = redis_url(14)
    clean_redis(url)
    app = create_app(Settings(**({"redis_url": url, "data_dir": tmp_path} | settings)))
    app.state.services.dispatcher = dispatcher or RecordingDispatcher()
    return TestClient(app)


def body(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "data": {"school": [1, 1, 2, 2, 3], "score": [1.0, 2.0, 3.5, 2.5, 0.1]},
        "formula": "score ~ (1 | school)",
    }
    return request | overrides


def test_a_valid_fit_is_accepted_and_queued(
    client: TestClient, dispatcher: RecordingDispatcher, tmp_path: Path
) -> None:
    response = client.post("/v1/fits", json=body(sampler={"draws": 200, "seed": 3}))
    assert response.status_code == 202
    fit = response.json()
    assert response.headers["location"] == f"/v1/fits/{fit['id']}"
    assert fit["status"] == "queued"
    assert fit["n_obs"] == 5
    assert fit["sampler"] == {
        "draws": 200,
        "tune": 1000,
        "chains": 4,
        "seed": 3,
        "target_accept": 0.8,  # a gaussian model's default
        "method": "nutpie",
        "refit_divergent": True,
        "time_limit_s": 3600,
        "parameterization": "auto",
        "adaptation": "diag",
    }
    assert dispatcher.fits == [fit["id"]]
    assert (tmp_path / "fits" / fit["id"] / "spec.json").exists()
    assert client.get(response.headers["location"]).json()["status"] == "queued"


def test_records_and_columns_are_the_same_data(client: TestClient) -> None:
    records = [{"school": 1, "score": 1.0}, {"school": 2, "score": 2.0}]
    response = client.post("/v1/fits", json=body(data=records))
    assert response.status_code == 202
    assert response.json()["n_obs"] == 2


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"formula": "score ~ (1 | "}, "formula", "bracket is not closed"),
        (
            {"formula": "score ~ school g"},
            "formula",
            "unexpected text after a complete formula: 'g'",
        ),
        ({"formula": "score ~ (1 | klass)"}, "formula", "'klass' is not a column of the data"),
        ({"data": []}, "data", "no rows"),
        ({"data": {}}, "data", "no rows"),
        ({"data": {"school": [1, 2], "score": [1.0]}}, "data", "equal lengths"),
        (
            {"data": [{"school": 1, "score": 1.0}, {"school": 2}]},
            "data[1]",
            "lacks ['score']",
        ),
        ({"family": "weibull"}, "family", "not supported"),
        ({"sampler": {"draws": 10_000}}, "sampler.draws", "above the limit of 5000"),
        ({"sampler": {"chains": 0}}, "sampler.chains", "greater than or equal to 1"),
        ({"sampler": {"method": "gibbs"}}, "sampler.method", "nutpie"),
        ({"data": {"school": [1, 2], "score": [1.0, None]}}, "data.score", "1 missing values"),
        ({"data": {"school": [1, 2], "score": ["a", "b"]}}, "data.score", "must be numeric"),
        ({"data": {"school": list(range(1001)), "score": [0.0] * 1001}}, "data", "limit is 1000"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"data": {"school": [1, 2], "score": [10**400, 1]}}, "data.score", "too large"),
        ({"data": {"school": [1, 2], "score": [2**60, 1]}}, "data.score", "too large"),
        ({"data": {"school": [1, 2], "score": [True, 2.5]}}, "data.score", "mixes booleans"),
        ({"formula": "score ~ 1:school"}, "formula", "terms cannot be formed"),
        ({"formula": "score ~ (0 | school)"}, "formula", "terms cannot be formed"),
    ],
)
def test_bad_requests_get_a_422_naming_the_field_and_nothing_is_queued(
    client: TestClient,
    dispatcher: RecordingDispatcher,
    overrides: dict[str, Any],
    field: str,
    message: str,
) -> None:
    response = client.post("/v1/fits", json=body(**overrides))
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 422
    assert any(e["field"] == field and message in e["message"] for e in problem["errors"]), problem
    assert dispatcher.fits == []
    assert client.get("/v1/fits").json() == []


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(
    client: TestClient, dispatcher: RecordingDispatcher, value: str
) -> None:
    raw = '{"data": {"school": [1, 2], "score": [1.0, %s]}, "formula": "score ~ (1|school)"}'
    response = client.post(
        "/v1/fits", content=(raw % value).encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "data.score"
    assert "NaN and Infinity are not JSON numbers" in error["message"]
    assert dispatcher.fits == []


def test_a_csv_upload_is_a_fit_request(client: TestClient, dispatcher: RecordingDispatcher) -> None:
    csv_text = "school,score\n1,1.0\n1,2.0\n2,3.5\n2,\n"
    response = client.post(
        "/v1/fits/upload",
        files={"file": ("students.csv", csv_text, "text/csv")},
        data={"request": json.dumps({"formula": "score ~ (1 | school)", "na_action": "drop"})},
    )
    assert response.status_code == 202, response.text
    assert (response.json()["n_obs"], response.json()["n_dropped"]) == (3, 1)
    assert len(dispatcher.fits) == 1


@pytest.mark.parametrize(
    ("request_field", "field", "message"),
    [
        ("{not json", "request", "not valid JSON"),
        ('{"formula": "score ~ (1 | school)", "data": []}', "request", "without 'data'"),
        ('{"formula": 3}', "formula", "valid string"),
    ],
)
def test_a_bad_upload_request_is_a_422(
    client: TestClient, request_field: str, field: str, message: str
) -> None:
    response = client.post(
        "/v1/fits/upload",
        files={"file": ("s.csv", "school,score\n1,1.0\n", "text/csv")},
        data={"request": request_field},
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == field and message in error["message"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data": {"y": [0.0] * 400, "g": list(range(400))}, "formula": "y ~ (1 | g)"},
            "the group-level design would take about 1.2 MiB (400 rows x 400 columns)",
        ),
        (
            {"sampler": {"draws": 3000, "chains": 4}},
            "draws x chains is 12000; the limit is 10000",
        ),
    ],
)
def test_models_too_large_are_refused_up_front(
    client: TestClient, overrides: dict[str, Any], message: str
) -> None:
    response = client.post("/v1/fits", json=body(**overrides))
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_non_finite_prior_parameters_are_refused(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    raw = (
        '{"data": {"school": [1, 2], "score": [1.0, 2.0]}, "formula": "score ~ (1|school)",'
        ' "priors": {"Intercept": {"dist": "Normal", "params": {"mu": NaN, "sigma": 1}}}}'
    )
    response = client.post(
        "/v1/fits", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"].startswith("priors.Intercept.params.mu")
    assert dispatcher.fits == []


def test_group_limits_apply_to_distributional_formulas_too(client: TestClient) -> None:
    n = 400
    data = {"y": [0.0] * n, "x": [0.5] * n, "g": list(range(n))}
    response = client.post(
        "/v1/fits",
        json=body(data=data, formula="y ~ x", distributional={"sigma": "(1 | g)"}),
    )
    assert response.status_code == 422
    assert "group-level design would take" in response.json()["detail"]


def test_refusals_do_not_echo_large_inputs(client: TestClient) -> None:
    huge = "score ~ " + " + ".join(["school"] * 2000)
    response = client.post("/v1/fits", json=body(formula=huge))
    assert response.status_code == 422
    assert len(response.text) < 1000


def test_a_body_that_is_not_json_is_a_422(client: TestClient) -> None:
    response = client.post(
        "/v1/fits", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("fit_id", ["0" * 32, "nope", "../../etc/passwd"])
def test_unknown_fits_are_404(client: TestClient, fit_id: str) -> None:
    for path in ("", "/summary", "/diagnostics", "/groups/school"):
        response = client.get(f"/v1/fits/{fit_id}{path}")
        assert response.status_code == 404, path
        assert response.headers["content-type"] == PROBLEM


def test_results_of_a_queued_fit_are_409(client: TestClient) -> None:
    location = client.post("/v1/fits", json=body()).headers["location"]
    for path in ("/summary", "/diagnostics", "/groups/school", "/loo"):
        response = client.get(location + path)
        assert response.status_code == 409
        assert "queued" in response.json()["detail"]
    response = client.post(location + "/predictions", json={"data": {"school": [1]}})
    assert response.status_code == 409
    fit_id = location.rsplit("/", 1)[1]
    response = client.post("/v1/comparisons", json={"fit_ids": [fit_id, fit_id]})
    assert response.status_code == 422  # the same fit twice
    other = client.post("/v1/fits", json=body(name="other")).json()["id"]
    response = client.post("/v1/comparisons", json={"fit_ids": [fit_id, other]})
    assert response.status_code == 409
    response = client.post("/v1/comparisons", json={"fit_ids": [fit_id]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "fit_ids"


def test_summary_interval_must_be_a_probability(client: TestClient) -> None:
    location = client.post("/v1/fits", json=body()).headers["location"]
    response = client.get(location + "/summary", params={"prob": 1.5})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "prob"


def test_when_redis_is_down_the_api_answers_503_with_retry_after(tmp_path: Path) -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path))
    with TestClient(app) as down:
        response = down.get("/v1/fits/" + "0" * 32)
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.headers["content-type"] == PROBLEM
        assert down.get("/v1/healthz").status_code == 200


def test_the_api_does_not_import_the_modelling_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, service.api.app;"
        "heavy = [m for m in ('bambi', 'pymc', 'arviz', 'nutpie', 'worker') if m in sys.modules];"
        "print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_identical_seeded_requests_are_one_fit(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    seeded = body(sampler={"seed": 11, "draws": 100})
    first = client.post("/v1/fits", json=seeded)
    second = client.post("/v1/fits", json=seeded)
    other_seed = client.post("/v1/fits", json=body(sampler={"seed": 12, "draws": 100}))
    assert first.json()["id"] == second.json()["id"] != other_seed.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert len(dispatcher.fits) == 2


def test_unseeded_requests_are_distinct_unless_they_share_an_idempotency_key(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    a = client.post("/v1/fits", json=body()).json()["id"]
    b = client.post("/v1/fits", json=body()).json()["id"]
    headers = {"Idempotency-Key": "order-42"}
    c = client.post("/v1/fits", json=body(), headers=headers).json()["id"]
    d = client.post("/v1/fits", json=body(), headers=headers).json()["id"]
    assert len({a, b, c}) == 3 and c == d
    assert dispatcher.fits == [a, b, c]


def test_deleting_a_queued_fit_cancels_it_and_deleting_again_removes_it(
    client: TestClient, tmp_path: Path
) -> None:
    location = client.post("/v1/fits", json=body()).headers["location"]
    cancelled = client.delete(location)
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert client.get(location).json()["status"] == "cancelled"
    fit_id = location.rsplit("/", 1)[1]
    assert (tmp_path / "fits" / fit_id).exists()
    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert not (tmp_path / "fits" / fit_id).exists()


def test_health_answers_head_requests_too(client: TestClient) -> None:
    assert client.head("/v1/healthz").status_code == 200


def test_a_key_reused_with_another_request_is_refused(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    headers = {"Idempotency-Key": "order-7"}
    first = client.post("/v1/fits", json=body(), headers=headers)
    other = client.post("/v1/fits", json=body(formula="score ~ 1"), headers=headers)
    assert first.status_code == 202
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert len(dispatcher.fits) == 1


def test_a_csv_upload_honours_its_idempotency_key(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    def upload() -> Any:
        return client.post(
            "/v1/fits/upload",
            files={"file": ("s.csv", "school,score\n1,1.0\n1,2.0\n2,3.5\n", "text/csv")},
            data={"request": json.dumps({"formula": "score ~ (1 | school)"})},
            headers={"Idempotency-Key": "upload-1"},
        )

    first, second = upload(), upload()
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert len(dispatcher.fits) == 1


def test_a_deleted_fits_key_makes_a_new_fit_with_a_new_id(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    headers = {"Idempotency-Key": "k-123"}
    first = client.post("/v1/fits", json=body(), headers=headers).json()["id"]
    client.delete(f"/v1/fits/{first}")  # queued: cancelled
    client.delete(f"/v1/fits/{first}")  # finished: deleted
    second = client.post("/v1/fits", json=body(formula="score ~ 1"), headers=headers)
    assert second.status_code == 202
    assert second.json()["id"] != first
    assert second.json()["formula"] == "score ~ 1"
    assert client.get(f"/v1/fits/{first}").status_code == 404
    assert dispatcher.fits == [first, second.json()["id"]]


def test_refused_requests_do_not_count_against_the_submission_quota(tmp_path: Path) -> None:
    with app_client(tmp_path, submissions_per_minute=2) as limited:
        for _ in range(10):
            assert limited.post("/v1/fits", json=body(formula="nope ~ 1")).status_code == 422
        seeded = body(sampler={"seed": 1})
        answers = [limited.post("/v1/fits", json=seeded).status_code for _ in range(3)]
        assert answers == [202, 202, 202]  # a repeat answers with its fit and costs nothing
        assert limited.post("/v1/fits", json=body()).status_code == 202
        over = limited.post("/v1/fits", json=body())
        assert over.status_code == 429
        assert "fits a minute" in over.json()["detail"]


class AnsweringDispatcher(RecordingDispatcher):
    """Answers dry runs as a worker would."""

    async def call(self, call: Any, owner: str = "") -> bytes:
        return json.dumps(
            {
                "formula": "score ~ (1 | school)",
                "family": "gaussian",
                "n_obs": 5,
                "n_dropped": 0,
                "n_parameters": 5,
                "groups": [],
                "priors": [],
            }
        ).encode()


def test_calls_that_need_a_worker_have_their_own_quota(tmp_path: Path) -> None:
    with app_client(tmp_path, AnsweringDispatcher(), calls_per_minute=2) as limited:
        answers = [limited.post("/v1/models/validate", json=body()) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[-1].headers["retry-after"]
        assert limited.post("/v1/fits", json=body()).status_code == 202  # fits: their own


def test_a_full_or_broken_data_folder_answers_503_or_507_and_records_nothing(
    tmp_path: Path, dispatcher: RecordingDispatcher
) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    with app_client(blocked, dispatcher) as broken:
        response = broken.post("/v1/fits", json=body())
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert "could not be stored" in response.json()["detail"]
    assert dispatcher.fits == []
    assert not Redis.from_url(redis_url(14)).keys("hbm:fit:*")


def test_readiness_names_what_is_missing(client: TestClient) -> None:
    response = client.get("/v1/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"]
    detail = response.json()["detail"]
    assert "no fit worker is alive" in detail and "no interactive worker is alive" in detail
    store = client.app.state.services.store  # type: ignore[attr-defined]
    store.announce_worker("hbm.fits", "host:1", ttl_s=30)
    store.announce_worker("hbm.interactive", "host:2", ttl_s=30)
    ready = client.get("/v1/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "redis": "ok",
        "fit_workers": "1",
        "interactive_workers": "1",
        "storage": "ok",
    }


def test_readiness_says_when_redis_is_away(tmp_path: Path) -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path))
    with TestClient(app) as down:
        response = down.get("/v1/readyz")
        assert response.status_code == 503
        assert "Redis does not answer" in response.json()["detail"]


def test_every_route_documents_the_errors_it_gives(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "Problem" in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.endswith("healthz"):
                continue
            errors = [code for code in operation["responses"] if code.startswith(("4", "5"))]
            assert "503" in errors, (method, path)
            for code in errors:
                content = operation["responses"][code]["content"]
                assert list(content) == ["application/problem+json"], (method, path, code)
    post_fits = document["paths"]["/v1/fits"]["post"]["responses"]
    assert {"401", "413", "422", "429", "503", "507"} <= set(post_fits)
