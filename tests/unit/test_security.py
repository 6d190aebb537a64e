"""Closed to strangers: API keys (hashed at rest), per-key visibility, quotas, body limits
and CORS. A recording dispatcher stands in for Celery; Redis is real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.security import key_digest
from tests.unit.test_api import app_client, body

ALICE, BOB = "alice-secret-key", "bob-secret-key"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    hashes = [key_digest(ALICE), key_digest(BOB)]
    with app_client(tmp_path, api_key_hashes=hashes, submissions_per_minute=3) as test_client:
        yield test_client


def test_keys_are_required_except_for_health(client: TestClient) -> None:
    assert client.get("/v1/healthz").status_code == 200
    for headers in ({}, {"X-API-Key": "guess"}):
        response = client.get("/v1/fits", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "ApiKey"
    assert client.get("/v1/fits", headers={"X-API-Key": ALICE}).status_code == 200
    assert client.get("/v1/fits", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200


def test_a_fit_is_visible_only_to_the_key_that_created_it(client: TestClient) -> None:
    alice, bob = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
    location = client.post("/v1/fits", json=body(), headers=alice).headers["location"]
    assert client.get(location, headers=alice).status_code == 200
    assert client.get(location, headers=bob).status_code == 404
    assert client.delete(location, headers=bob).status_code == 404
    assert client.get("/v1/fits", headers=bob).json() == []
    assert len(client.get("/v1/fits", headers=alice).json()) == 1
    # the same seeded request from another key is another fit
    seeded = body(sampler={"seed": 5})
    a = client.post("/v1/fits", json=seeded, headers=alice).json()["id"]
    b = client.post("/v1/fits", json=seeded, headers=bob).json()["id"]
    assert a != b


def test_beyond_the_quota_submissions_get_429_with_retry_after(client: TestClient) -> None:
    alice = {"X-API-Key": ALICE}
    answers = [client.post("/v1/fits", json=body(), headers=alice) for _ in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert 0 < int(answers[-1].headers["retry-after"]) <= 60
    # the quota is per key
    assert client.post("/v1/fits", json=body(), headers={"X-API-Key": BOB}).status_code == 202


def test_keys_are_not_needed_when_none_are_configured(tmp_path: Path) -> None:
    with app_client(tmp_path) as open_client:
        assert open_client.post("/v1/fits", json=body()).status_code == 202


def test_oversized_bodies_are_refused_before_parsing(tmp_path: Path) -> None:
    with app_client(tmp_path, max_body_bytes=1000) as small:
        big = {"data": {"y": [1.0] * 500, "g": [1] * 500}, "formula": "y ~ (1|g)"}
        response = small.post("/v1/fits", json=big)
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"

        def chunks() -> Iterator[bytes]:  # no Content-Length: a chunked, endless-looking body
            yield b'{"data": {"y": ['
            for _ in range(1000):
                yield b"1.0, "

        streamed = small.post(
            "/v1/fits", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert small.post("/v1/fits", json=body()).status_code == 202


def test_cors_is_off_unless_configured(tmp_path: Path) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with app_client(tmp_path) as closed:
        response = closed.options("/v1/fits", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with app_client(tmp_path, cors_origins=["https://app.example"]) as opened:
        response = opened.options("/v1/fits", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"


def test_a_key_with_too_many_fits_in_progress_gets_429(tmp_path: Path) -> None:
    with app_client(tmp_path, max_active_fits_per_key=2) as busy:
        first = busy.post("/v1/fits", json=body()).headers["location"]
        assert busy.post("/v1/fits", json=body()).status_code == 202
        refused = busy.post("/v1/fits", json=body())
        assert refused.status_code == 429
        assert "already queued or running" in refused.json()["detail"]
        assert busy.delete(first).json()["status"] == "cancelled"  # frees a place
        assert busy.post("/v1/fits", json=body()).status_code == 202


def test_a_body_is_not_read_before_the_key_is_checked(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.api.bodies

    def never(*_: Any) -> Any:
        raise AssertionError("the body was parsed before the key was checked")

    monkeypatch.setattr(service.api.bodies, "parse_body", never)
    big = b'{"data": {"y": [' + b"1.0," * 200_000 + b'1.0]}, "formula": "y ~ 1"}'
    for headers in ({}, {"X-API-Key": "guess"}):
        response = client.post(
            "/v1/fits", content=big, headers={"content-type": "application/json", **headers}
        )
        assert response.status_code == 401
        assert response.headers["connection"] == "close"
