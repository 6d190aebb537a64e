"""A fit's report page in a real browser (Debian's Chromium, driven by Playwright), against a
real deployment with API keys: the page is opened once with ``?key=`` and works from the
cookie it gets (its event stream, its LOO request, its images); a running fit's progress
updates in place without a reload; a finished fit shows its results with the client's
strange texts escaped; the list of fits links to each report. No console errors but the
404s of plots that the service does not draw yet (filtered explicitly, and reported).

Screenshots are kept under ``var/test-artifacts/`` (printed). Without ``/usr/bin/chromium``
(``make browser`` installs it) or Playwright these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import QUICK, Deployment, deployed, wait_for_fit
from tests.e2e.test_events import digest, slow_fit, submit

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "var" / "test-artifacts"
KEY, OTHER_KEY = "report-key-1", "report-key-2"
#: The name and a group label that try to run code in the page if it is not escaped.
EVIL_NAME = "<script>window.__xss = 1</script> study"
EVIL_LABEL = "<img src=x onerror=window.__xss=2>"
#: A console message the tests accept: a plot the plots route does not serve (yet).
PLOT_404 = re.compile(r"/v1/fits/[0-9a-f]{32}/plots/")


def browser_or_skip() -> Any:
    """Playwright's sync API, or a skip saying what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"no browser: {CHROMIUM} is missing (`make browser` installs Debian's chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser driver: the playwright package is not installed (dev extras)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = browser_or_skip()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    browser_or_skip()
    yield from deployed(
        tmp_path_factory, 11, HBM_API_KEY_HASHES=json.dumps([digest(KEY), digest(OTHER_KEY)])
    )


@pytest.fixture
def client(keyed: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.base_url, timeout=120, headers={"X-API-Key": KEY}) as http:
        yield http


class Page:
    """A browser tab that records console errors and the pages it navigated to."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context(
            base_url=base_url, viewport={"width": 1200, "height": 900}
        )
        self.page = self.context.new_page()
        self.errors: list[tuple[str, str]] = []
        self.navigations: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append((str(error), "")))
        self.page.on(
            "framenavigated",
            lambda frame: (
                self.navigations.append(frame.url) if frame == self.page.main_frame else None
            ),
        )

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append((message.text, message.location.get("url", "")))

    def open_with_key(self, path: str, key: str = KEY) -> None:
        """Open a page as a person with a key does: once with ``?key=``."""
        response = self.page.goto(f"{path}?key={key}")
        assert response is not None and response.status == 200
        assert self.page.url.endswith(path), "the key stays in the address bar"

    def unexpected_errors(self) -> list[tuple[str, str]]:
        """Console errors but the 404s of plots not drawn yet."""
        return [
            (text, url)
            for text, url in self.errors
            if not ("status of 404" in text and PLOT_404.search(url))
        ]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def tab(browser: Any, keyed: Deployment) -> Iterator[Page]:
    page = Page(browser, keyed.base_url)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def finished_fit(keyed: Deployment, seed_records: list[dict[str, Any]]) -> dict[str, Any]:
    """A succeeded fit whose name and group labels are HTML that would run if not escaped."""
    labels = {r["school"]: f"{EVIL_LABEL} {r['school']}" for r in seed_records}
    data = [{"school": labels[r["school"]], "score": r["score"]} for r in seed_records]
    request = {
        "data": data,
        "formula": "score ~ (1 | school)",
        "name": EVIL_NAME,
        "sampler": {**QUICK, "seed": 7},
    }
    with httpx.Client(base_url=keyed.base_url, timeout=120, headers={"X-API-Key": KEY}) as client:
        fit = wait_for_fit(client, f"/v1/fits/{submit(client, request)}")
    assert fit["status"] == "succeeded", fit
    return fit


def test_a_running_fits_report_updates_its_progress_without_a_reload(
    tab: Page, client: httpx.Client, seed_records: list[dict[str, Any]]
) -> None:
    fit_id = submit(client, slow_fit(seed_records, 21, draws=3000))
    path = f"/v1/fits/{fit_id}/report"
    tab.open_with_key(path)
    page = tab.page
    page.evaluate("window.__sameDocument = true")
    # The draws done grow in the chains table, from the event stream, page unchanged.
    page.wait_for_function(
        """() => {
            const cells = [...document.querySelectorAll('#chains td.draws')];
            const total = cells.reduce((sum, cell) => sum + Number(cell.textContent), 0);
            if (!window.__firstTotal && total > 0) { window.__firstTotal = total; }
            return window.__firstTotal && total > window.__firstTotal;
        }""",
        timeout=240_000,
    )
    assert page.text_content("#status") == "running"
    assert int(page.get_attribute("#report", "data-updates") or 0) >= 2
    tab.screenshot("report-running.png")
    # Then the end arrives: the status changes in place and the page offers the results.
    page.wait_for_selector("#finished", state="visible", timeout=240_000)
    assert page.text_content("#status") == "succeeded"
    assert page.evaluate("window.__sameDocument") is True
    assert len(tab.navigations) == 1  # one page load: the redirect's target
    assert tab.unexpected_errors() == []


def test_a_finished_fits_report_shows_its_results_with_every_text_escaped(
    tab: Page, keyed: Deployment, client: httpx.Client, finished_fit: dict[str, Any]
) -> None:
    fit_id = finished_fit["id"]
    tab.open_with_key(f"/v1/fits/{fit_id}/report")
    page = tab.page
    page.wait_for_load_state("load")
    # The texts are shown as text, and ran nothing.
    assert page.text_content("h1") == EVIL_NAME
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("document.scripts.length") == 1
    assert f"{EVIL_LABEL} 1" in (page.text_content("#groups") or "")
    assert page.text_content("#status") == "succeeded"
    assert page.text_content("#verdict .verdict") in ("pass", "warn", "fail")
    assert page.locator("#summary tbody tr").count() >= 3  # intercept, group sd, sigma
    assert page.locator("#groups td.level").count() == 20
    # LOO on request: a fetch with the cookie, written into the table.
    page.click("#loo-button")
    page.wait_for_selector("#loo-table", state="visible", timeout=120_000)
    assert float(page.text_content('[data-field="elpd_loo"]') or "nan") < 0
    # Every image the plots route serves has loaded; the others are marked missing.
    served, missing = check_plots(tab, client)
    print(f"plots checked in the browser (served, loaded): {served or 'none'}")
    print(f"plots not served yet (404, marked missing): {missing or 'none'}")
    assert served or missing
    tab.screenshot("report-finished.png")
    assert tab.unexpected_errors() == []


def check_plots(tab: Page, client: httpx.Client) -> tuple[list[str], list[str]]:
    """Which plot images are served (each must have loaded in the page) and which are not
    (404: the page must mark them missing)."""
    page = tab.page
    deadline = time.monotonic() + 120
    while page.evaluate(
        "[...document.querySelectorAll('figure.plot img')].some(image => !image.complete)"
    ):
        assert time.monotonic() < deadline, "the plots did not load"
        time.sleep(0.2)
    served, missing = [], []
    for figure in page.query_selector_all("figure.plot"):
        image = figure.query_selector("img")
        assert image is not None
        url = image.get_attribute("src") or ""
        kind = figure.get_attribute("data-kind") or ""
        status = client.get(url).status_code
        if status == 200:
            assert image.evaluate("image => image.naturalWidth") > 0, url
            served.append(kind)
        else:
            assert status == 404, (url, status)
            assert "missing" in (figure.get_attribute("class") or ""), url
            missing.append(kind)
    return served, missing


def test_the_list_of_fits_links_to_each_report(tab: Page, finished_fit: dict[str, Any]) -> None:
    tab.open_with_key("/v1/ui")
    page = tab.page
    row = page.locator("tr", has_text=EVIL_NAME)
    assert row.locator(".status").text_content() == "succeeded"
    assert row.locator(".verdict").text_content() in ("pass", "warn", "fail")
    row.locator("a.report-link").click()
    page.wait_for_url(f"**/v1/fits/{finished_fit['id']}/report")
    assert page.text_content("h1") == EVIL_NAME
    assert tab.unexpected_errors() == []


def test_another_keys_browser_sees_neither_the_fit_nor_its_report(
    tab: Page, finished_fit: dict[str, Any]
) -> None:
    tab.open_with_key("/v1/ui", key=OTHER_KEY)
    assert EVIL_NAME not in (tab.page.text_content("main") or "")
    response = tab.page.goto(f"/v1/fits/{finished_fit['id']}/report")
    assert response is not None and response.status == 404
