"""Every URL of the API on one screen. Handlers are thin: validate, then store or dispatch.

Handlers that wait on a worker are ``async``: they hold no thread while they wait (see
``dispatch``); their Redis reads and validation run in the thread pool. Bodies are read by
``bodies.read_model`` (streamed, bounded, off the event loop).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from service.api.bodies import DataLimits, body_schema, read_model
from service.api.deps import Caller, Services
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
from service.core.errors import InvalidRequest, NotFound, Unavailable
from service.core.protocol import (
    Call,
    CompareCall,
    DescribeCall,
    FitRef,
    GroupsCall,
    LooCall,
    PpcCall,
    PredictCall,
    SummaryCall,
)
from service.core.schemas import (
    DEFAULT_PROB,
    Comparison,
    ComparisonRequest,
    Diagnostics,
    FitRequest,
    FitResource,
    FitStatus,
    GroupEffects,
    GroupFactors,
    Health,
    IntervalKind,
    Loo,
    ModelDescription,
    Ppc,
    PpcStatName,
    PredictionRequest,
    Predictions,
    Priors,
    Readiness,
    Summary,
)

router = APIRouter(prefix="/v1")

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
    """Readiness: Redis answers, the data folder is writable, and at least one fit worker
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
    return _with_links(record)


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
    return _with_links(record)


@router.get("/fits", tags=["fits"], responses=documented(*COMMON, 422))
def list_fits(
    caller: CallerDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[FitResource]:
    """Fits, newest first."""
    ids = caller.services.store.list_ids(offset, limit, owner=caller.owner)
    return [_with_links(r) for r in map(caller.services.store.get, ids) if r is not None]


@router.get("/fits/{fit_id}", tags=["fits"], responses=documented(*COMMON, 404))
def get_fit(fit_id: str, caller: CallerDep) -> FitResource:
    """A fit's status, progress while running, timings, versions, and error if it failed."""
    return _with_links(caller.fit(fit_id))


@router.delete(
    "/fits/{fit_id}",
    tags=["fits"],
    responses={
        202: {"description": "Cancelled (queued) or cancelling (running): poll the fit."},
        204: {"description": "A finished fit and its files were deleted."},
        **documented(*COMMON, 404),
    },
)
def delete_fit(fit_id: str, caller: CallerDep) -> Response:
    """Cancel a queued or running fit, or delete a finished one and its files."""
    store = caller.services.store
    # Atomic against the run's finish: a fit that is still running ends cancelled.
    in_progress = (FitStatus.RUNNING, FitStatus.CANCELLED)
    if not caller.fit(fit_id).status.is_final and store.request_cancel(fit_id) in in_progress:
        body = _with_links(caller.fit(fit_id)).model_dump_json()
        return Response(body, status_code=202, media_type="application/json")
    # Finished (possibly just now, before the cancel): delete its files, then its record.
    caller.services.artifacts.delete(fit_id)
    store.delete(fit_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


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
    call = await run_in_threadpool(_predict_call, caller, fit_id, prediction)
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


def _predict_call(caller: Caller, fit_id: str, request: PredictionRequest) -> PredictCall:
    record = caller.succeeded(fit_id)
    spec = caller.services.artifacts.read_spec(fit_id)
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
    check_comparable({fit_id: artifacts.read_spec(fit_id) for fit_id in records})
    check_comparison_cost(
        {
            fit_id: r.n_obs * r.sampler.draws * r.sampler.chains
            for fit_id, r in records.items()
            if not artifacts.path(fit_id, LOO_POINTWISE_FILE).exists()
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
    checks["storage"] = "ok" if services.artifacts.writable() else "not writable"
    if checks["storage"] != "ok":
        missing.append("the data folder is not writable")
    if missing:
        raise Unavailable(f"not ready: {'; '.join(missing)}", retry_after=5)
    return Readiness(checks=checks)


def _with_links(record: FitResource) -> FitResource:
    base = f"/v1/fits/{record.id}"
    record.links = {"self": base}
    if record.status is FitStatus.SUCCEEDED:
        record.links |= {
            "summary": f"{base}/summary",
            "diagnostics": f"{base}/diagnostics",
            "predictions": f"{base}/predictions",
            "priors": f"{base}/priors",
            "loo": f"{base}/loo",
            "ppc": f"{base}/ppc",
        }
    return record
