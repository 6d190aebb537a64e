"""Every URL of the API on one screen. Handlers are thin: validate, then store or dispatch.

Handlers that wait on a worker are ``async``: they hold no thread while they wait (see
``dispatch``); their Redis reads and validation run in the thread pool. Bodies are read by
``bodies.read_model`` (streamed, bounded, off the event loop).

Elsewhere: ``events.py`` serves ``/v1/fits/{id}/events`` (live progress, Server-Sent Events);
``ui.py`` serves the pages ``/v1/fits/{id}/report`` and ``/v1/ui`` (and ``/ui/static/``).
``metrics.py`` serves ``/metrics`` (Prometheus; outside ``/v1``, its own bearer token).
``models.py`` serves the named models: ``/v1/models``, ``/v1/models/{name}`` (PUT, GET,
DELETE), ``/v1/models/{name}/rollback`` and ``/v1/models/{name}/predictions``; the dry run
``POST /v1/models/validate`` stays here (``validate`` is a reserved model name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from service.api.bodies import DataLimits, body_schema, read_model
from service.api.deps import Caller, Services
from service.api.files import file_answer
from service.api.problems import documented
from service.api.security import CallerDep
from service.api.submissions import count_call, submit_fit
from service.api.validation import (
    check_comparable,
    check_comparison_cost,
    parse_csv,
    validate_fit_request,
    validate_prediction_data,
)
from service.core.artifacts import (
    DIAGNOSTICS_FILE,
    FACTORS_FILE,
    GROUPS_FILE,
    LOO_FILE,
    LOO_POINTWISE_FILE,
    PRIORS_FILE,
    SUMMARY_FILE,
)
from service.core.broker import broker_url, is_amqp, queue_depths
from service.core.errors import InvalidRequest, NotFound, Unavailable
from service.core.models import ModelConflict
from service.core.protocol import (
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
)
from service.core.schemas import (
    DEFAULT_PROB,
    Comparison,
    ComparisonRequest,
    Diagnostics,
    DrawsFormat,
    DrawsLayout,
    FitRequest,
    FitResource,
    FitStatus,
    GroupEffects,
    GroupFactors,
    Health,
    IntervalKind,
    Loo,
    ModelDescription,
    PlotFormat,
    PlotKind,
    Ppc,
    PpcStatName,
    PredictionRequest,
    Predictions,
    Priors,
    Readiness,
    Summary,
    WebhookSecret,
)
from service.core.webhooks import (
    SIGNED_CONTENT,
    TOLERANCE_S,
    enqueue_first,
    signing_secret,
    webhooks_enabled,
)

router = APIRouter(prefix="/v1")
log = logging.getLogger(__name__)

ProbQuery = Annotated[float, Query(gt=0, lt=1, description="Interval probability.")]
KindQuery = Annotated[IntervalKind, Query(description="hdi (highest density) or eti.")]
IdempotencyKey = Annotated[
    str | None,
    Header(max_length=200, description="Same key, same fit: a retried POST is safe."),
]
#: Errors every route with a key and a body may give.
COMMON = (401, 408, 413, 422, 503)
#: Errors of a fit's results.
RESULT_ERRORS = (*COMMON, 404, 409, 422, 429, 500)


def file_responses(description: str, media_types: Iterable[str]) -> dict[int | str, Any]:
    """The documented answers of a route serving a stored file (``service.api.files``)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        200: {"description": description, "content": dict.fromkeys(media_types, binary)},
        304: {"description": "Not modified: the ETag sent in If-None-Match is current."},
        **documented(*RESULT_ERRORS),
    }


def result_route[Endpoint: Callable[..., Any]](
    path: str, model: type[BaseModel], body: type[BaseModel] | None = None
) -> Callable[[Endpoint], Endpoint]:
    """A route answering one of a fit's results: GET, or POST with ``body``."""
    if body is None:
        return router.get(
            path, tags=["results"], response_model=model, responses=documented(*RESULT_ERRORS)
        )
    return router.post(
        path,
        tags=["results"],
        response_model=model,
        responses=documented(*RESULT_ERRORS),
        openapi_extra=body_schema(body),
    )


@router.get("/healthz", tags=["health"])
async def healthz() -> Health:
    """Liveness: the API process answers (never waits on Redis or a worker)."""
    return Health()


router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)


@router.get("/readyz", tags=["health"], responses=documented(503))
async def readyz(request: Request) -> Readiness:
    """Readiness: Redis answers, the storage is writable, and at least one fit worker
    and one interactive worker are alive (503 naming what is missing otherwise)."""
    services: Services = request.app.state.services
    return await run_in_threadpool(readiness, services)


@router.post(
    "/fits",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["fits"],
    responses=documented(*COMMON, 422, 429, 507),
    openapi_extra=body_schema(FitRequest),
)
async def create_fit(
    request: Request, response: Response, caller: CallerDep, idempotency_key: IdempotencyKey = None
) -> FitResource:
    """Validate a model and queue it for fitting. Poll the ``Location`` for its status.

    A request with a fixed ``sampler.seed`` is content-addressed: the same request gives the
    same fit, sampled once. An ``Idempotency-Key`` header does the same for any request.
    """
    fit_request = await read_model(request, FitRequest, DataLimits.for_fits(caller.settings))
    record = await run_in_threadpool(submit_fit, caller, fit_request, idempotency_key)
    response.headers["Location"] = f"/v1/fits/{record.id}"
    return record.with_links()


@router.post(
    "/fits/upload",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["fits"],
    responses=documented(*COMMON, 422, 429, 507),
)
async def create_fit_from_csv(
    response: Response,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="The data: a CSV file with a header row.")],
    request: Annotated[
        str, Form(description="The rest of the fit request as JSON (formula, family...).")
    ],
    idempotency_key: IdempotencyKey = None,
) -> FitResource:
    """Like ``POST /v1/fits``, with the data uploaded as a CSV file (multipart form)."""
    fit_request = await run_in_threadpool(_csv_request, caller, file, request)
    record = await run_in_threadpool(submit_fit, caller, fit_request, idempotency_key)
    response.headers["Location"] = f"/v1/fits/{record.id}"
    return record.with_links()


@router.get("/fits", tags=["fits"], responses=documented(*COMMON, 422))
def list_fits(
    caller: CallerDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[FitResource]:
    """Fits, newest first."""
    ids = caller.services.store.list_ids(offset, limit, owner=caller.owner)
    return [r.with_links() for r in map(caller.services.store.get, ids) if r is not None]


@router.get("/fits/{fit_id}", tags=["fits"], responses=documented(*COMMON, 404))
def get_fit(fit_id: str, caller: CallerDep) -> FitResource:
    """A fit's status, progress while running, timings, versions, and error if it failed."""
    return caller.fit(fit_id).with_links()


@router.delete(
    "/fits/{fit_id}",
    tags=["fits"],
    responses={
        202: {"description": "Cancelled (queued) or cancelling (running): poll the fit."},
        204: {"description": "A finished fit and its files were deleted."},
        **documented(*COMMON, 404, 409),
    },
)
def delete_fit(fit_id: str, caller: CallerDep) -> Response:
    """Cancel a queued or running fit, or delete a finished one and its files (409 while a
    named model's version, current or past, serves it)."""
    store = caller.services.store
    # Atomic against the run's finish: a fit that is still running ends cancelled.
    in_progress = (FitStatus.RUNNING, FitStatus.CANCELLED)
    if not caller.fit(fit_id).status.is_final and store.request_cancel(fit_id) in in_progress:
        record = caller.fit(fit_id).with_links()
        if record.status is FitStatus.CANCELLED:  # it was queued: this request ended it
            _notify(caller, fit_id, FitStatus.CANCELLED)
        return Response(record.model_dump_json(), status_code=202, media_type="application/json")
    # Finished (possibly just now, before the cancel): its record, then its files. The
    # record goes first, in one step with the check that no named model uses the fit (a
    # promotion checks the record in its own step): a fit is never promoted without files.
    # Files left by a failed removal have no record: the reconciler's sweep removes them.
    in_use = store.delete(fit_id)
    if in_use:
        raise ModelConflict(
            f"the fit serves a version of the named models {in_use[:20]}; delete those "
            "models first (DELETE /v1/models/{name})"
        )
    caller.services.artifacts.delete(fit_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/webhooks/secret", tags=["webhooks"], responses=documented(401, 404, 503))
def get_webhook_secret(caller: CallerDep, response: Response) -> WebhookSecret:
    """The secret your fits' notifications (``notify_url``) are signed with, and how: check
    ``X-Signature`` against HMAC-SHA256 of ``X-Hbm-Timestamp + "." + body``."""
    secret = caller.settings.webhook_secret
    if not webhooks_enabled(caller.settings) or secret is None:
        raise NotFound("webhooks are off on this service")
    response.headers["Cache-Control"] = "no-store"
    return WebhookSecret(
        secret=signing_secret(secret.get_secret_value(), caller.owner),
        signed=SIGNED_CONTENT,
        tolerance_s=TOLERANCE_S,
    )


@result_route("/fits/{fit_id}/summary", Summary)
async def get_summary(
    fit_id: str, caller: CallerDep, prob: ProbQuery = DEFAULT_PROB, interval: KindQuery = "hdi"
) -> Response:
    """Posterior mean, sd, interval and MCSE of every parameter."""
    if interval == "hdi" and prob == DEFAULT_PROB:
        return await _stored(caller, fit_id, SUMMARY_FILE)
    call = await run_in_threadpool(
        lambda: SummaryCall(**_fitted(caller, fit_id), interval=interval, prob=prob)
    )
    return await _ask(caller, call)


@result_route("/fits/{fit_id}/groups", GroupFactors)
async def list_groups(fit_id: str, caller: CallerDep) -> Response:
    """The grouping factors of a fit, with their level counts and terms."""
    return await _stored(caller, fit_id, FACTORS_FILE)


@result_route("/fits/{fit_id}/groups/{factor}", GroupEffects)
async def get_groups(
    fit_id: str,
    factor: str,
    caller: CallerDep,
    prob: ProbQuery = DEFAULT_PROB,
    interval: KindQuery = "hdi",
) -> Response:
    """Each level of a grouping factor: its partially pooled effect (ranef) and total (coef)."""
    if interval == "hdi" and prob == DEFAULT_PROB:

        def stored() -> Response:
            caller.succeeded(fit_id)
            artifacts = caller.services.artifacts
            files = json.loads(artifacts.read_result(fit_id, GROUPS_FILE))
            if factor not in files:
                raise NotFound(
                    f"the model has no grouping factor '{factor[:60]}'; it has {sorted(files)}"
                )
            return _json(artifacts.read_result(fit_id, files[factor]))

        return await run_in_threadpool(stored)
    call = await run_in_threadpool(
        lambda: GroupsCall(**_fitted(caller, fit_id), factor=factor, interval=interval, prob=prob)
    )
    return await _ask(caller, call)


@result_route("/fits/{fit_id}/diagnostics", Diagnostics)
async def get_diagnostics(fit_id: str, caller: CallerDep) -> Response:
    """R-hat, ESS, divergences and a plain-language verdict."""
    return await _stored(caller, fit_id, DIAGNOSTICS_FILE)


@result_route("/fits/{fit_id}/priors", Priors)
async def get_priors(fit_id: str, caller: CallerDep) -> Response:
    """Every prior the fit used, Bambi's data-scaled defaults included."""
    return await _stored(caller, fit_id, PRIORS_FILE)


@result_route("/fits/{fit_id}/predictions", Predictions, body=PredictionRequest)
async def predict(fit_id: str, request: Request, caller: CallerDep) -> Response:
    """Predict new rows, for groups seen in training or new ones."""
    limits = DataLimits.for_predictions(caller.settings)
    prediction = await read_model(request, PredictionRequest, limits)
    call = await run_in_threadpool(predict_call, caller, fit_id, prediction)
    return await _ask(caller, call)


@result_route("/fits/{fit_id}/loo", Loo)
async def get_loo(fit_id: str, caller: CallerDep) -> Response:
    """PSIS leave-one-out cross-validation (elpd_loo, p_loo, looic, Pareto k): computed by a
    worker on the first request, then stored."""

    def stored() -> Response | None:
        caller.succeeded(fit_id)
        try:
            return _json(caller.services.artifacts.read_result(fit_id, LOO_FILE))
        except FileNotFoundError:
            return None

    answer = await run_in_threadpool(stored)
    if answer is not None:
        return answer
    call = await run_in_threadpool(lambda: LooCall(**_fitted(caller, fit_id)))
    return await _ask(caller, call)


@result_route("/fits/{fit_id}/ppc", Ppc)
async def get_ppc(
    fit_id: str,
    caller: CallerDep,
    stat: Annotated[PpcStatName, Query(description="The statistic T of the response.")] = "mean",
    by: Annotated[
        str | None, Query(max_length=200, description="A grouping factor or column: T per level.")
    ] = None,
    prob: ProbQuery = DEFAULT_PROB,
    interval: KindQuery = "hdi",
    seed: Annotated[int, Query(ge=0, lt=2**32, description="Seeds the replicated data.")] = 0,
) -> Response:
    """Posterior predictive check: T on the data against T on data replicated from the
    posterior (mean, sd, interval) and the p-value P(T(y_rep) >= T(y)); per level of ``by``."""
    call = await run_in_threadpool(
        lambda: PpcCall(
            **_fitted(caller, fit_id), stat=stat, by=by, interval=interval, prob=prob, seed=seed
        )
    )
    return await _ask(caller, call)


#: How each draws format is served.
DRAWS_MEDIA_TYPES = {
    "netcdf": "application/x-netcdf",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}


@router.get(
    "/fits/{fit_id}/draws",
    tags=["results"],
    response_class=Response,
    responses=file_responses(
        "The draws as a file (an attachment), streamed.", DRAWS_MEDIA_TYPES.values()
    ),
)
async def get_draws(
    fit_id: str,
    request: Request,
    caller: CallerDep,
    file_format: Annotated[
        DrawsFormat, Query(alias="format", description="netcdf (ArviZ), csv or parquet.")
    ] = "netcdf",
    var: Annotated[
        list[Annotated[str, Field(max_length=200)]] | None,
        Query(
            max_length=100,
            description="A variable to export, repeated for more (default: every parameter "
            "of /summary): a parameter's name, or a group term such as 1|school with groups.",
        ),
    ] = None,
    thin: Annotated[int, Query(ge=1, le=10**6, description="Keep every thin-th draw.")] = 1,
    layout: Annotated[
        DrawsLayout,
        Query(
            description="CSV and Parquet: wide (a row per draw, a column per parameter) or "
            "long (chain, draw, parameter, value)."
        ),
    ] = "wide",
    groups: Annotated[bool, Query(description="Add the group effects of every level.")] = False,
    sample_stats: Annotated[
        bool, Query(description="Add the sampler statistics (lp, diverging, tree_depth...).")
    ] = False,
) -> Response:
    """The posterior draws with their chain and draw indices, as a file: written by a worker
    on the first request (at most ``HBM_MAX_EXPORT_VALUES`` values, else 422 naming
    ``thin``), then streamed from storage; cache it by its ETag."""
    call = await run_in_threadpool(
        lambda: DrawsCall(
            **_fitted(caller, fit_id),
            format=file_format,
            var=tuple(sorted(set(var or ()))),
            thin=thin,
            layout="wide" if file_format == "netcdf" else layout,  # netCDF has one layout
            groups=groups,
            sample_stats=sample_stats,
        )
    )
    media_type = DRAWS_MEDIA_TYPES[file_format]
    name = f"{fit_id}-draws.{call.extension()}"
    return await file_answer(caller, request, call, media_type, download_name=name)


#: How each plot format is served.
PLOT_MEDIA_TYPES: dict[PlotFormat, str] = {"png": "image/png", "svg": "image/svg+xml"}
#: The query parameters each kind of plot uses (the others are left out of its call, so
#: that one picture is one stored file).
PLOT_CHOICES: dict[str, frozenset[str]] = {
    "trace": frozenset({"var"}),
    "forest": frozenset({"var", "prob"}),
    "caterpillar": frozenset({"factor", "prob", "page"}),
    "shrinkage": frozenset({"factor"}),
}


@router.get(
    "/fits/{fit_id}/plots/{kind}",
    tags=["results"],
    response_class=Response,
    responses=file_responses(
        "The plot: drawn by a worker on the first request, then served from storage; the "
        "same request always gives the same bytes.",
        PLOT_MEDIA_TYPES.values(),
    ),
)
async def get_plot(
    fit_id: str,
    kind: PlotKind,
    request: Request,
    caller: CallerDep,
    file_format: Annotated[
        PlotFormat | None,
        Query(
            alias="format",
            description="png (the default) or svg; without it, an Accept header that prefers "
            "image/svg+xml gets SVG.",
        ),
    ] = None,
    var: Annotated[
        list[Annotated[str, Field(max_length=200)]] | None,
        Query(
            max_length=60,
            description="trace, forest: a parameter to show, repeated for more (default: the "
            "main parameters; the forest's: fixed effects and group SDs), as /summary names "
            "them, or a group term such as 1|school.",
        ),
    ] = None,
    factor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="caterpillar, shrinkage: the grouping factor (needed when the model "
            "has several).",
        ),
    ] = None,
    prob: ProbQuery = DEFAULT_PROB,
    page: Annotated[
        int | None,
        Query(
            ge=1,
            le=10**6,
            description="caterpillar: the page of 60 levels to label (default: every level, "
            "with labels thinned past 60).",
        ),
    ] = None,
) -> Response:
    """A picture of the fit: ``trace`` (with rank plots), ``forest``, ``caterpillar``,
    ``shrinkage``, ``ppc``, ``loo_pit`` or ``pareto_k``, as PNG or SVG. Drawn by a worker on
    the first request, then served from storage; cache it by its ETag."""
    chosen: PlotFormat = file_format or _image_format(request.headers.get("accept", ""))
    uses = PLOT_CHOICES.get(kind, frozenset())
    choices = {
        "var": tuple(dict.fromkeys(var or ())) if "var" in uses else (),
        "factor": factor if "factor" in uses else None,
        "prob": prob if "prob" in uses else DEFAULT_PROB,
        "page": page if "page" in uses else None,
    }
    call = await run_in_threadpool(
        lambda: PlotCall(**_fitted(caller, fit_id), kind=kind, format=chosen, **choices)
    )
    response = await file_answer(caller, request, call, PLOT_MEDIA_TYPES[chosen])
    if file_format is None:
        response.headers["Vary"] = "Accept"
    return response


def _image_format(accept: str) -> PlotFormat:
    """svg when the Accept header prefers image/svg+xml to image/png (by q), else png."""
    quality: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))

    def of(media: str) -> float:
        return quality.get(media, quality.get("image/*", quality.get("*/*", 0.0)))

    return "svg" if of("image/svg+xml") > of("image/png") else "png"


@router.post(
    "/comparisons",
    tags=["results"],
    response_model=Comparison,
    responses=documented(*RESULT_ERRORS),
    openapi_extra=body_schema(ComparisonRequest),
)
async def compare_fits(request: Request, caller: CallerDep) -> Response:
    """Rank fits of the same data by PSIS-LOO (ArviZ's ``compare``): elpd differences with
    their SE, stacking weights, and a verdict in words."""
    limits = DataLimits.for_predictions(caller.settings)
    comparison = await read_model(request, ComparisonRequest, limits)
    call = await run_in_threadpool(_compare_call, caller, comparison)
    return await _ask(caller, call)


@router.post(
    "/models/validate",
    tags=["models"],
    response_model=ModelDescription,
    responses=documented(*COMMON, 422, 429),
    openapi_extra=body_schema(FitRequest),
)
async def validate_model(request: Request, caller: CallerDep) -> Response:
    """Dry run: check a fit request and describe the model (terms, groups, parameters,
    priors) without sampling."""
    fit_request = await read_model(request, FitRequest, DataLimits.for_fits(caller.settings))

    def validated() -> DescribeCall:
        spec, _ = validate_fit_request(fit_request, caller.settings)
        count_call(caller)
        return DescribeCall(spec=spec)

    call = await run_in_threadpool(validated)
    return await _ask(caller, call)


# ------------------------------------------------------------------------------ helpers


async def _ask(caller: Caller, call: Call) -> Response:
    """A worker's answer to ``call``, served as the worker built it."""
    return _json(await caller.services.dispatcher.call(call, caller.owner))


def _json(body: bytes) -> Response:
    """A JSON answer built and validated elsewhere (a worker, or a stored result)."""
    return Response(body, media_type="application/json")


async def _stored(caller: Caller, fit_id: str, name: str) -> Response:
    """A result stored when the fit succeeded, served as it was written."""

    def read() -> Response:
        caller.succeeded(fit_id)
        return _json(caller.services.artifacts.read_result(fit_id, name))

    return await run_in_threadpool(read)


def _fitted(caller: Caller, fit_id: str) -> dict[str, str]:
    """What a call about a succeeded fit names (its id and revision), counted as a call."""
    record = caller.succeeded(fit_id)
    count_call(caller)
    return {"fit_id": fit_id, "revision": record.created_at.isoformat()}


def predict_call(caller: Caller, fit_id: str, request: PredictionRequest) -> PredictCall:
    """The call predicting ``request``'s rows with the caller's succeeded fit, the rows
    checked against that fit's spec (also used by a named model's predictions)."""
    record = caller.succeeded(fit_id)
    spec = caller.services.specs.get(fit_id, record.created_at.isoformat())
    columns = validate_prediction_data(request.data, spec, caller.settings)
    count_call(caller)
    data = request.data
    return PredictCall(
        fit_id=fit_id,
        revision=record.created_at.isoformat(),
        n_rows=len(data) if isinstance(data, list) else len(next(iter(data.values()), [])),
        columns=columns,
        **request.model_dump(exclude={"data"}),
    )


def _compare_call(caller: Caller, request: ComparisonRequest) -> CompareCall:
    """The call comparing the caller's succeeded fits, once they are known comparable."""
    if len(set(request.fit_ids)) != len(request.fit_ids):
        raise InvalidRequest.one("fit_ids", "lists a fit more than once")
    records = {fit_id: caller.succeeded(fit_id) for fit_id in request.fit_ids}
    artifacts = caller.services.artifacts
    specs = caller.services.specs
    check_comparable({i: specs.get(i, r.created_at.isoformat()) for i, r in records.items()})
    check_comparison_cost(
        {
            fit_id: r.n_obs * r.sampler.draws * r.sampler.chains
            for fit_id, r in records.items()
            if not artifacts.exists(fit_id, LOO_POINTWISE_FILE)
        }
    )
    count_call(caller)
    refs = tuple(FitRef(fit_id=i, revision=r.created_at.isoformat()) for i, r in records.items())
    return CompareCall(fits=refs)


def _csv_request(caller: Caller, file: UploadFile, request: str) -> FitRequest:
    """The fit request of a CSV upload: the form's JSON fields and the file's columns."""
    try:
        fields = json.loads(request)
    except json.JSONDecodeError as exc:
        raise InvalidRequest.one("request", "is not valid JSON") from exc
    if not isinstance(fields, dict) or "data" in fields:
        raise InvalidRequest.one("request", "must be a JSON object without 'data'")
    settings = caller.settings
    file.file.seek(0)
    columns = parse_csv(
        file.file,
        max_rows=settings.max_rows,
        max_columns=settings.max_columns,
        max_cells=settings.max_cells,
        max_cell_chars=settings.max_text_chars,
    )
    try:
        return FitRequest.model_validate({**fields, "data": columns})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def readiness(services: Services) -> Readiness:
    """What readyz checks; Unavailable naming every dependency that is missing."""
    settings, store = services.settings, services.store
    checks: dict[str, str] = {}
    missing: list[str] = []
    try:
        store.redis.ping()
        checks["redis"] = "ok"
        for role, queue in (
            ("fit", settings.fit_queue),
            ("interactive", settings.interactive_queue),
        ):
            alive = len(store.live_workers(queue))
            checks[f"{role}_workers"] = str(alive)
            if not alive:
                missing.append(f"no {role} worker is alive")
    except RedisError:
        checks["redis"] = "unreachable"
        missing.append("Redis does not answer")
    if is_amqp(broker_url(settings)):  # a broker of its own: it must answer too
        try:
            queue_depths(settings, queues=[settings.fit_queue])
            checks["broker"] = "ok"
        except Exception:
            checks["broker"] = "unreachable"
            missing.append("the broker does not answer")
    checks["storage"] = "ok" if services.artifacts.writable() else "not writable"
    if checks["storage"] != "ok":
        missing.append("the storage is not writable")
    if missing:
        raise Unavailable(f"not ready: {'; '.join(missing)}", retry_after=5)
    return Readiness(checks=checks)


def _notify(caller: Caller, fit_id: str, final: FitStatus) -> None:
    """Send the notification of a fit this request made final (once; one that cannot be
    sent now is sent by the reconciler)."""
    dispatcher = caller.services.dispatcher
    try:
        enqueue_first(
            caller.services.store,
            lambda fit, attempt: dispatcher.enqueue_notification(fit, attempt),
            fit_id,
            final,
        )
    except Exception:
        log.warning("fit %s: its notification was not sent; the reconciler will", fit_id)
