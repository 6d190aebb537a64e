"""Every URL of the API on one screen. Handlers are thin: validate, then store or dispatch."""

from __future__ import annotations

import hashlib
import json
import shutil
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.deps import Caller
from service.api.security import CallerDep
from service.core import tasks
from service.core.csvdata import parse_csv
from service.core.errors import InvalidRequest, NotFound, TooManyRequests
from service.core.jobs import new_fit_id
from service.core.schemas import (
    DEFAULT_PROB,
    Diagnostics,
    FitRequest,
    FitResource,
    FitSpec,
    FitStatus,
    GroupEffects,
    GroupFactors,
    GroupInfo,
    Health,
    IntervalKind,
    ModelDescription,
    PredictionRequest,
    Predictions,
    Priors,
    Summary,
)
from service.core.validation import validate_fit_request, validate_prediction_data

router = APIRouter(prefix="/v1")

ProbQuery = Annotated[float, Query(gt=0, lt=1, description="Interval probability.")]
KindQuery = Annotated[IntervalKind, Query(description="hdi (highest density) or eti.")]


@router.get("/healthz", tags=["health"])
def healthz() -> Health:
    """Liveness: the API process answers."""
    return Health()


@router.post(
    "/fits",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["fits"],
    responses={422: {"description": "The request was refused; nothing was queued."}},
)
def create_fit(
    request: FitRequest,
    response: Response,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="Same key, same fit: a retried POST is safe."),
    ] = None,
) -> FitResource:
    """Validate a model and queue it for fitting. Poll the ``Location`` for its status.

    A request with a fixed ``sampler.seed`` is content-addressed: the same request gives the
    same fit, sampled once. An ``Idempotency-Key`` header does the same for any request.
    """
    services = caller.services
    _admit(caller)  # before validation: refusing over quota is cheap
    spec, _ = validate_fit_request(request, services.settings)
    fit_id = _claim_id(caller, spec, request.sampler.seed is not None, idempotency_key)
    record = services.store.get(fit_id)
    if record is None:
        services.artifacts.write_spec(fit_id, spec)
        record = services.store.create(fit_id, spec, caller.owner)
        if record.status is FitStatus.QUEUED and record.attempts == 0:
            services.dispatcher.enqueue_fit(fit_id)
    response.headers["Location"] = f"/v1/fits/{fit_id}"
    return _with_links(record)


@router.delete(
    "/fits/{fit_id}",
    tags=["fits"],
    responses={
        202: {"description": "Cancelled (queued) or cancelling (running): poll the fit."},
        204: {"description": "A finished fit and its files were deleted."},
    },
)
def delete_fit(fit_id: str, caller: CallerDep) -> Response:
    """Cancel a queued or running fit, or delete a finished one and its files."""
    record = caller.fit(fit_id)
    if record.status.is_final:
        caller.services.store.delete(fit_id)
        shutil.rmtree(caller.services.artifacts.fit_dir(fit_id), ignore_errors=True)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    caller.services.store.request_cancel(fit_id)
    body = _with_links(caller.fit(fit_id)).model_dump_json()
    return Response(body, status_code=status.HTTP_202_ACCEPTED, media_type="application/json")


@router.post(
    "/fits/upload",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["fits"],
    responses={422: {"description": "The request was refused; nothing was queued."}},
)
async def create_fit_from_csv(
    response: Response,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="The data: a CSV file with a header row.")],
    request: Annotated[
        str, Form(description="The rest of the fit request as JSON (formula, family...).")
    ],
) -> FitResource:
    """Like ``POST /v1/fits``, with the data uploaded as a CSV file (multipart form)."""
    payload = await file.read(caller.services.settings.max_upload_bytes + 1)
    if len(payload) > caller.services.settings.max_upload_bytes:
        raise InvalidRequest.one(
            "file", f"the file is larger than {caller.services.settings.max_upload_bytes} bytes"
        )
    try:
        fields = json.loads(request)
    except json.JSONDecodeError as exc:
        raise InvalidRequest.one("request", "is not valid JSON") from exc
    if not isinstance(fields, dict) or "data" in fields:
        raise InvalidRequest.one("request", "must be a JSON object without 'data'")
    try:
        fit_request = FitRequest.model_validate({**fields, "data": parse_csv(payload)})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    return await run_in_threadpool(create_fit, fit_request, response, caller)


@router.get("/fits", tags=["fits"])
def list_fits(
    caller: CallerDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[FitResource]:
    """Fits, newest first."""
    ids = caller.services.store.list_ids(offset, limit, owner=caller.owner)
    return [_with_links(r) for r in map(caller.services.store.get, ids) if r is not None]


@router.get("/fits/{fit_id}", tags=["fits"])
def get_fit(fit_id: str, caller: CallerDep) -> FitResource:
    """A fit's status, progress while running, timings, versions, and error if it failed."""
    return _with_links(caller.fit(fit_id))


@router.get("/fits/{fit_id}/summary", tags=["results"])
def get_summary(
    fit_id: str,
    caller: CallerDep,
    prob: ProbQuery = DEFAULT_PROB,
    interval: KindQuery = "hdi",
) -> Summary:
    """Posterior mean, sd, interval and MCSE of every parameter."""
    body = _results(caller, fit_id, "summary", interval, prob)
    return Summary.model_validate(body)


@router.get("/fits/{fit_id}/groups", tags=["results"])
def list_groups(fit_id: str, caller: CallerDep) -> GroupFactors:
    """The grouping factors of a fit, with their level counts and terms."""
    groups = _results(caller, fit_id, "groups", "hdi", DEFAULT_PROB)
    factors = [
        GroupInfo(
            factor=name,
            levels=len(body["levels"]),
            terms=sorted({e["term"] for level in body["levels"] for e in level["effects"]}),
        )
        for name, body in groups.items()
    ]
    return GroupFactors(fit_id=fit_id, factors=factors)


@router.get("/fits/{fit_id}/groups/{factor}", tags=["results"])
def get_groups(
    fit_id: str,
    factor: str,
    caller: CallerDep,
    prob: ProbQuery = DEFAULT_PROB,
    interval: KindQuery = "hdi",
) -> GroupEffects:
    """Each level of a grouping factor: its partially pooled effect (ranef) and total (coef)."""
    groups = _results(caller, fit_id, "groups", interval, prob)
    if factor not in groups:
        raise NotFound(f"the model has no grouping factor '{factor[:60]}'; it has {sorted(groups)}")
    return GroupEffects.model_validate(groups[factor])


@router.get("/fits/{fit_id}/diagnostics", tags=["results"])
def get_diagnostics(fit_id: str, caller: CallerDep) -> Diagnostics:
    """R-hat, ESS, divergences and a plain-language verdict."""
    caller.succeeded(fit_id)
    return Diagnostics.model_validate(
        caller.services.artifacts.read_json(fit_id, "diagnostics.json")
    )


@router.get("/fits/{fit_id}/priors", tags=["results"])
def get_priors(fit_id: str, caller: CallerDep) -> Priors:
    """Every prior the fit used, Bambi's data-scaled defaults included."""
    caller.succeeded(fit_id)
    return Priors.model_validate(caller.services.artifacts.read_json(fit_id, "priors.json"))


@router.post("/fits/{fit_id}/predictions", tags=["results"])
def predict(fit_id: str, request: PredictionRequest, caller: CallerDep) -> Predictions:
    """Predict new rows, for groups seen in training or new ones."""
    caller.succeeded(fit_id)
    spec = caller.services.artifacts.read_spec(fit_id)
    columns = validate_prediction_data(request.data, spec, caller.services.settings)
    payload = {
        "fit_id": fit_id,
        "columns": columns,
        **request.model_dump(exclude={"data"}),
    }
    return Predictions.model_validate(caller.services.dispatcher.call(tasks.PREDICT, payload))


@router.post(
    "/models/validate",
    tags=["models"],
    responses={422: {"description": "The model was refused; the problem names the field."}},
)
def validate_model(request: FitRequest, caller: CallerDep) -> ModelDescription:
    """Dry run: check a fit request and describe the model (terms, groups, parameters,
    priors) without sampling."""
    spec, _ = validate_fit_request(request, caller.services.settings)
    body = caller.services.dispatcher.call(tasks.DESCRIBE, {"spec": spec.model_dump(mode="json")})
    return ModelDescription.model_validate(body)


# ------------------------------------------------------------------------------ helpers


def _results(caller: Caller, fit_id: str, what: str, interval: IntervalKind, prob: float) -> Any:
    """Stored results at the default interval; other intervals are computed by a worker."""
    caller.succeeded(fit_id)
    if interval == "hdi" and prob == DEFAULT_PROB:
        return caller.services.artifacts.read_json(fit_id, f"{what}.json")
    payload = {"fit_id": fit_id, "what": what, "interval": interval, "prob": prob}
    return caller.services.dispatcher.call(tasks.RESULTS, payload)


def _admit(caller: Caller) -> None:
    """The key's quotas: fits in progress, and submissions a minute (429 beyond)."""
    store, settings = caller.services.store, caller.services.settings
    limit = settings.max_active_fits_per_key
    if store.active_count(caller.owner) >= limit:
        raise TooManyRequests(f"{limit} fits are already queued or running", retry_after=30)
    count, reset_s = store.count_submission(caller.owner)
    if count > settings.submissions_per_minute:
        raise TooManyRequests(
            f"over {settings.submissions_per_minute} submissions a minute", retry_after=reset_s
        )


def _claim_id(caller: Caller, spec: FitSpec, seeded: bool, idempotency_key: str | None) -> str:
    """The fit's id: the one already recorded for the same Idempotency-Key or the same
    seeded request by this key, or a new one."""
    store, ttl = caller.services.store, caller.services.settings.retention_s
    fit_id = new_fit_id()
    if idempotency_key is not None:
        return store.claim(f"{caller.owner}:key:{_digest(idempotency_key)}", fit_id, ttl)
    if seeded:
        content = _digest(spec.model_dump_json())
        return store.claim(f"{caller.owner}:content:{content}", fit_id, ttl)
    return fit_id


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _with_links(record: FitResource) -> FitResource:
    base = f"/v1/fits/{record.id}"
    record.links = {"self": base}
    if record.status is FitStatus.SUCCEEDED:
        record.links |= {
            "summary": f"{base}/summary",
            "diagnostics": f"{base}/diagnostics",
            "predictions": f"{base}/predictions",
            "priors": f"{base}/priors",
        }
    return record
