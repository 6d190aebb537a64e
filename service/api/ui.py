"""Pages for people: a fit's report (``GET /v1/fits/{id}/report``) and the list of the
caller's fits (``GET /v1/ui``), rendered on the server from the stored JSON results.

The pages read what the JSON routes serve (``Artifacts.read_result``, in a thread) and
never import the modelling libraries. Jinja2 escapes every value (``autoescape``): names,
formulas, column names and group labels are the client's text. A page runs no inline code:
its script and style are files served by the app (``/ui/static/``), and a
Content-Security-Policy allows nothing else (no CDN, no inline script, same-origin fetches,
images and event streams only). While a fit runs, ``report.js`` follows its event stream
(``service.api.events``) and updates the progress in place.

Keys: a browser cannot set the ``X-API-Key`` header on an ``EventSource`` or an ``<img>``.
With keys on, a page opened once as ``?key=KEY`` answers 303 to the same URL without the
key and sets an HttpOnly, SameSite=Strict cookie holding it (path ``/v1``, for this browser
session), which ``security.Authenticate`` accepts on GET requests only (so the cookie alone
can never create, cancel or delete anything).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from service.api.deps import Caller
from service.api.problems import documented
from service.api.security import KEY_COOKIE, KEY_QUERY, CallerDep, cookie_value, key_digest
from service.core.artifacts import (
    DIAGNOSTICS_FILE,
    FACTORS_FILE,
    GROUPS_FILE,
    LOO_FILE,
    SUMMARY_FILE,
)
from service.core.errors import DamagedResults
from service.core.schemas import (
    Diagnostics,
    FitResource,
    FitStatus,
    GroupEffects,
    GroupFactors,
    Loo,
    Summary,
)

router = APIRouter(prefix="/v1", tags=["pages"])

HERE = Path(__file__).parent
#: Where the pages' own script and style are served (no key needed: they hold no data).
STATIC_URL = "/ui/static"
#: Levels of each grouping factor a report shows (all of them: ``/groups/{factor}``).
MAX_LEVELS = 50

#: The plots a report shows, in order: (kind, title, one image per grouping factor). Each
#: image is ``GET /v1/fits/{id}/plots/{kind}?format=svg`` (``&factor=`` per factor).
PLOTS: tuple[tuple[str, str, bool], ...] = (
    ("trace", "Trace of the chains", False),
    ("forest", "Forest plot of the parameters", False),
    ("caterpillar", "Group effects by level", True),
    ("shrinkage", "Shrinkage: each level's own estimate against the pooled one", False),
    ("ppc", "Posterior predictive check", False),
    ("loo_pit", "LOO-PIT: calibration of the predictive distribution", False),
    ("pareto_k", "Pareto k of each row (reliability of LOO)", False),
)

#: Headers of every page: only the app's own files, no framing, no referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _number(value: Any, digits: int = 3) -> str:
    """A number for people: fixed digits where that reads well, else 3 significant ones."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}g}"


TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["number"] = _number


def static_files() -> StaticFiles:
    """The pages' script and style, mounted at ``STATIC_URL``."""
    return StaticFiles(directory=HERE / "static")


@dataclass(frozen=True)
class Plot:
    """One image of a report."""

    kind: str
    title: str
    url: str


def plots(fit_id: str, factors: list[str]) -> list[Plot]:
    """Every image of a succeeded fit's report (see ``PLOTS``)."""
    base = f"/v1/fits/{fit_id}/plots"
    images = []
    for kind, title, per_factor in PLOTS:
        if per_factor:
            images += [
                Plot(kind, f"{title}: {factor}", f"{base}/{kind}?format=svg&factor={quote(factor)}")
                for factor in factors
            ]
        else:
            images.append(Plot(kind, title, f"{base}/{kind}?format=svg"))
    return images


@dataclass
class Results:
    """What a succeeded fit's report shows, read from its stored results."""

    summary: Summary
    diagnostics: Diagnostics
    factors: GroupFactors
    groups: list[GroupEffects]
    loo: Loo | None


def _results(caller: Caller, fit_id: str) -> Results:
    """The stored results of a succeeded fit (each group factor's first ``MAX_LEVELS``)."""
    artifacts = caller.services.artifacts

    def read(name: str) -> Any:
        return json.loads(artifacts.read_result(fit_id, name))

    groups = []
    for file in read(GROUPS_FILE).values():
        effects = read(file)
        effects["levels"] = effects["levels"][:MAX_LEVELS]
        groups.append(GroupEffects.model_validate(effects))
    try:
        loo = Loo.model_validate(read(LOO_FILE))
    except FileNotFoundError:
        loo = None
    return Results(
        summary=Summary.model_validate(read(SUMMARY_FILE)),
        diagnostics=Diagnostics.model_validate(read(DIAGNOSTICS_FILE)),
        factors=GroupFactors.model_validate(read(FACTORS_FILE)),
        groups=groups,
        loo=loo,
    )


def _page(template: str, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(static=STATIC_URL, **context)
    return HTMLResponse(html, headers=PAGE_HEADERS)


def _key_exchange(request: Request) -> Response | None:
    """A page opened with ``?key=``: the same page without it, the key kept in a cookie
    if it is one of the service's (a request may also have passed with a header)."""
    key = request.query_params.get(KEY_QUERY)
    if key is None:
        return None
    query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != KEY_QUERY])
    response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), 303)
    if key_digest(key.strip()) in request.app.state.services.settings.api_key_hashes:
        response.set_cookie(
            KEY_COOKIE,
            cookie_value(key.strip()),
            path="/v1",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


KeyQuery = Annotated[
    str | None,
    Query(
        alias=KEY_QUERY,
        max_length=500,
        description="With API keys on: the key, exchanged once for an HttpOnly cookie.",
    ),
]


@router.get(
    "/fits/{fit_id}/report",
    response_class=HTMLResponse,
    responses=documented(401, 404, 422, 500, 503),
)
async def fit_report(
    fit_id: str, request: Request, caller: CallerDep, key: KeyQuery = None
) -> Response:
    """A fit's report for people: the request in words, its live progress while it runs,
    then its summary, verdict, group effects, LOO and plots."""
    if (redirect := _key_exchange(request)) is not None:
        return redirect

    def render() -> HTMLResponse:
        fit = caller.fit(fit_id).with_links()
        results = _results(caller, fit_id) if fit.status is FitStatus.SUCCEEDED else None
        factors = [f.factor for f in results.factors.factors] if results else []
        return _page(
            "report.html",
            fit=fit,
            results=results,
            plots=plots(fit_id, factors) if results else [],
            max_levels=MAX_LEVELS,
            events_url=f"/v1/fits/{fit_id}/events",
        )

    return await run_in_threadpool(render)


@router.get("/ui", response_class=HTMLResponse, responses=documented(401, 422, 503))
async def fits_page(
    request: Request,
    caller: CallerDep,
    key: KeyQuery = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> Response:
    """The caller's fits, newest first, each linking to its report."""
    if (redirect := _key_exchange(request)) is not None:
        return redirect

    def render() -> HTMLResponse:
        store = caller.services.store
        ids = store.list_ids(offset, limit + 1, owner=caller.owner)
        fits = [r for r in map(store.get, ids[:limit]) if r is not None]
        rows = [(fit, _verdict(caller, fit)) for fit in fits]
        return _page(
            "fits.html",
            rows=rows,
            offset=offset,
            limit=limit,
            more=len(ids) > limit,
        )

    return await run_in_threadpool(render)


def _verdict(caller: Caller, fit: FitResource) -> str | None:
    """A succeeded fit's convergence verdict (None for others, "?" if unreadable)."""
    if fit.status is not FitStatus.SUCCEEDED:
        return None
    try:
        stored = json.loads(caller.services.artifacts.read_result(fit.id, DIAGNOSTICS_FILE))
        return str(stored["verdict"])
    except (FileNotFoundError, DamagedResults, KeyError, ValueError):
        return "?"
