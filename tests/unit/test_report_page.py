"""The report page and the list of fits are pages for people: every text a client sent
(a fit's name, its formula and column names, group labels, anything in the stored results)
is escaped, the page runs only the app's own script, and with API keys on a browser gets in
by opening a page once with ``?key=`` (an HttpOnly cookie then stands for the key on GET
requests only). Results are written here as a worker would store them; the browser tests
(tests/e2e/test_report_page.py) fit real models."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.ui import MAX_LEVELS, PLOTS, plots
from service.core.artifacts import (
    DIAGNOSTICS_FILE,
    FACTORS_FILE,
    GROUPS_FILE,
    SUMMARY_FILE,
    group_file,
)
from service.core.schemas import (
    Diagnostics,
    Estimate,
    FitStatus,
    GroupEffects,
    GroupFactors,
    GroupInfo,
    GroupLevel,
    Interval,
    LevelEffect,
    ParameterSummary,
    Summary,
)
from tests.unit.test_api import app_client

EVIL = "<script>alert('x')</script>"
EVIL_LABEL = '<img src=x onerror="alert(1)">'
EVIL_COLUMN = "<script>score"
KEY = "report-key-1"


def escaped(text: str) -> str:
    """How Jinja2 writes ``text`` into HTML."""
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    yield app_client(tmp_path)


def submit(client: TestClient, headers: dict[str, str] | None = None, **fields: Any) -> str:
    labels = [EVIL_LABEL, EVIL_LABEL, "b", "b", "c", "c"]
    request = {
        "data": {"g": labels, EVIL_COLUMN: [1.0, 2.0, 3.5, 2.5, 0.1, 0.3]},
        "formula": f"`{EVIL_COLUMN}` ~ (1 | g)",
        "name": EVIL,
        "sampler": {"draws": 200, "tune": 200, "chains": 2},
    } | fields
    response = client.post("/v1/fits", json=request, headers=headers or {})
    assert response.status_code == 202, response.text
    fit_id: str = response.json()["id"]
    return fit_id


def succeed(client: TestClient, fit_id: str, levels: int = 3) -> None:
    """Store results as a worker would, then record the fit as succeeded."""
    services = client.app.state.services  # type: ignore[attr-defined]
    estimate = Estimate(mean=0.1, sd=0.2, lower=-0.3, upper=0.5)
    interval = Interval(kind="hdi", prob=0.94)
    term = f"1|{EVIL_LABEL}"
    results = {
        SUMMARY_FILE: Summary(
            fit_id=fit_id,
            interval=interval,
            parameters=[
                ParameterSummary(
                    name=EVIL,
                    kind="fixed",
                    term=EVIL,
                    mcse_mean=0.01,
                    mcse_sd=0.01,
                    **vars(estimate),
                )
            ],
        ),
        DIAGNOSTICS_FILE: Diagnostics(
            fit_id=fit_id,
            verdict="warn",
            warnings=[f"the parameter {EVIL} mixes slowly"],
            chains=2,
            draws=400,
            divergences=0,
            max_treedepth_hits=0,
            ebfmi=[1.0, 0.9],
            max_r_hat=1.02,
            min_ess_bulk=150.0,
            min_ess_tail=140.0,
            parameters=[],
        ),
        FACTORS_FILE: GroupFactors(
            fit_id=fit_id, factors=[GroupInfo(factor=EVIL_LABEL, levels=levels, terms=[term])]
        ),
        group_file(0): GroupEffects(
            fit_id=fit_id,
            factor=EVIL_LABEL,
            interval=interval,
            terms=[term],
            sd=[estimate],
            levels=[
                GroupLevel(
                    level=f"{EVIL_LABEL} {i}",
                    n_obs=2,
                    effects=[LevelEffect(term=term, ranef=estimate, coef=estimate)],
                )
                for i in range(levels)
            ],
        ),
    }
    for name, model in results.items():
        services.artifacts.write_bytes(fit_id, name, model.model_dump_json().encode())
    services.artifacts.write_json(fit_id, GROUPS_FILE, {EVIL_LABEL: group_file(0)})
    services.store.start_attempt(fit_id)
    assert services.store.finish(fit_id, FitStatus.SUCCEEDED) is FitStatus.SUCCEEDED


def scripts(html: str) -> list[str]:
    """Every script element of a page."""
    return re.findall(r"<script\b[^>]*>", html)


def test_a_report_escapes_every_text_the_client_sent(client: TestClient) -> None:
    fit_id = submit(client)
    succeed(client, fit_id)
    response = client.get(f"/v1/fits/{fit_id}/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert scripts(html) == ['<script src="/ui/static/report.js" defer>']
    for text in (EVIL, EVIL_LABEL, EVIL_COLUMN):
        assert text not in html
    assert escaped(EVIL) in html  # the name, a parameter, a warning
    assert escaped(f"`{EVIL_COLUMN}` ~ (1 | g)") in html  # the formula
    assert escaped(f"{EVIL_LABEL} 0") in html  # a group label
    assert "onerror=" not in html.replace(escaped('onerror="'), "")


def test_a_report_allows_only_the_apps_own_files(client: TestClient) -> None:
    fit_id = submit(client)
    headers = client.get(f"/v1/fits/{fit_id}/report").headers
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    for name in ("report.js", "report.css", "favicon.svg"):
        assert client.get(f"/ui/static/{name}").status_code == 200


def test_a_running_fit_is_followed_live_from_its_event_stream(client: TestClient) -> None:
    fit_id = submit(client)
    html = client.get(f"/v1/fits/{fit_id}/report").text
    assert f'data-events="/v1/fits/{fit_id}/events"' in html
    assert 'data-status="queued"' in html
    assert "<h2>Plots</h2>" not in html  # results only once succeeded


def test_a_succeeded_fit_shows_its_results_and_every_plot(client: TestClient) -> None:
    fit_id = submit(client, name="plain")
    succeed(client, fit_id)
    html = client.get(f"/v1/fits/{fit_id}/report").text
    assert 'class="verdict verdict-warn">warn<' in html
    assert "Posterior summary" in html and "Compute LOO" in html
    images = re.findall(r'<img src="([^"]+)"', html)
    factor = "%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E"
    assert images == [
        f"/v1/fits/{fit_id}/plots/{kind}?format=svg" + (f"&amp;factor={factor}" if each else "")
        for kind, _, each in PLOTS
    ]
    assert [p.kind for p in plots(fit_id, ["a", "b"])].count("caterpillar") == 2


def test_a_factor_with_many_levels_shows_the_first_fifty_with_a_note(client: TestClient) -> None:
    fit_id = submit(client, name="many")
    succeed(client, fit_id, levels=MAX_LEVELS + 7)
    html = client.get(f"/v1/fits/{fit_id}/report").text
    assert html.count('class="level"') == MAX_LEVELS
    assert f"The first {MAX_LEVELS} of {MAX_LEVELS + 7} levels" in html


def test_the_report_is_among_a_fits_links(client: TestClient) -> None:
    fit_id = submit(client)
    links = client.get(f"/v1/fits/{fit_id}").json()["links"]
    assert links["report"] == f"/v1/fits/{fit_id}/report"
    assert links["events"] == f"/v1/fits/{fit_id}/events"


def test_the_list_of_fits_links_each_report_with_its_verdict(client: TestClient) -> None:
    done, queued = submit(client), submit(client, name="second")
    succeed(client, done)
    response = client.get("/v1/ui")
    assert response.status_code == 200
    html = response.text
    assert html.index(f"/v1/fits/{queued}/report") < html.index(f"/v1/fits/{done}/report")
    assert 'class="verdict verdict-warn">warn<' in html
    assert EVIL not in html and escaped(EVIL) in html
    assert scripts(html) == ['<script src="/ui/static/report.js" defer>']


def test_an_unknown_fit_has_no_report(client: TestClient) -> None:
    response = client.get(f"/v1/fits/{'0' * 32}/report")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


# ------------------------------------------------------------------------ with API keys


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[TestClient]:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    other = hashlib.sha256(b"other-key").hexdigest()
    with app_client(tmp_path, api_key_hashes=[digest, other]) as test_client:
        yield test_client


def test_a_key_in_the_url_becomes_an_http_only_cookie_and_leaves_the_url(
    keyed: TestClient,
) -> None:
    fit_id = submit(keyed, headers={"X-API-Key": KEY})
    assert keyed.get(f"/v1/fits/{fit_id}/report").status_code == 401
    response = keyed.get(f"/v1/fits/{fit_id}/report?key={KEY}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/v1/fits/{fit_id}/report"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"hbm_key={KEY};")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/v1"):
        assert attribute.lower() in cookie.lower()
    # The browser now sends the cookie: the page, its stream's resource and results answer.
    assert keyed.get(f"/v1/fits/{fit_id}/report").status_code == 200
    assert keyed.get(f"/v1/fits/{fit_id}").status_code == 200
    assert keyed.get("/v1/ui?offset=0").status_code == 200


def test_the_key_cookie_never_authorizes_a_change(keyed: TestClient) -> None:
    fit_id = submit(keyed, headers={"X-API-Key": KEY})
    keyed.cookies.set("hbm_key", KEY)
    assert keyed.delete(f"/v1/fits/{fit_id}").status_code == 401
    assert keyed.post("/v1/fits", json={"formula": "y ~ 1", "data": {"y": [1]}}).status_code == 401
    assert keyed.get(f"/v1/fits/{fit_id}").status_code == 200


def test_a_wrong_key_in_the_url_is_refused_and_sets_no_cookie(keyed: TestClient) -> None:
    response = keyed.get("/v1/ui?key=not-a-key", follow_redirects=False)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_another_keys_fit_has_no_report(keyed: TestClient) -> None:
    fit_id = submit(keyed, headers={"X-API-Key": KEY})
    keyed.cookies.set("hbm_key", "other-key")
    assert keyed.get(f"/v1/fits/{fit_id}/report").status_code == 404
    assert f"/v1/fits/{fit_id}/report" not in keyed.get("/v1/ui").text


def test_only_a_valid_key_becomes_a_cookie(keyed: TestClient) -> None:
    headers = {"X-API-Key": KEY}
    response = keyed.get("/v1/ui?key=not-a-key", headers=headers, follow_redirects=False)
    assert response.status_code == 303
    assert "set-cookie" not in response.headers


def test_the_key_is_accepted_in_the_url_of_pages_only(keyed: TestClient) -> None:
    fit_id = submit(keyed, headers={"X-API-Key": KEY})
    assert keyed.get(f"/v1/fits/{fit_id}?key={KEY}").status_code == 401
