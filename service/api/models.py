"""Named models: ``/v1/models/{name}`` serves one of your fits under a stable name, as its
current version, with every version and every change kept (``service.core.models``).

    GET    /v1/models                        your models, by name (offset, limit)
    PUT    /v1/models/{name}                 promote a fit as the next version (201 when it
                                             creates the model); idempotent
    GET    /v1/models/{name}                 current version, every version, the history
    POST   /v1/models/{name}/rollback        make an earlier version current again
    DELETE /v1/models/{name}                 forget the model (not its fits)
    POST   /v1/models/{name}/predictions     predict with the current version

A prediction resolves the model's current (version, fit) once, atomically, before anything
else, and uses that fit (its spec to check the rows, its id and revision for the worker)
for the whole call: a promotion landing meanwhile changes the next request, never this
one. The worker knows nothing of models; this module adds ``model: {name, version,
fit_id}`` to its answer and mirrors it in ``X-Model-Version`` and ``X-Fit-Id`` headers.
``validate`` is not a model name: ``POST /v1/models/validate`` is the dry run (routes.py).
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service.api.bodies import DataLimits, body_schema, read_model
from service.api.deps import Caller
from service.api.problems import documented
from service.api.routes import COMMON, predict_call
from service.api.security import CallerDep
from service.core.artifacts import DIAGNOSTICS_FILE
from service.core.models import (
    Current,
    ModelConflict,
    ModelRegistry,
    Promotion,
    check_name,
)
from service.core.protocol import PredictCall
from service.core.schemas import (
    ModelPredictions,
    ModelRef,
    NamedModel,
    NamedModelSummary,
    PredictionRequest,
    PromoteRequest,
    RollbackRequest,
    Verdict,
)

router = APIRouter(prefix="/v1", tags=["models"])


async def get_registry(request: Request) -> ModelRegistry:
    """The app's named models."""
    registry: ModelRegistry = request.app.state.models
    return registry


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


@router.get("/models", responses=documented(*COMMON))
def list_models(
    caller: CallerDep,
    registry: RegistryDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[NamedModelSummary]:
    """Your named models, by name: current version, its fit, formula, last change."""
    return registry.list_models(caller.owner, offset, limit)


@router.put(
    "/models/{name}",
    responses={
        201: {"description": "The model was created with this fit as version 1."},
        **documented(*COMMON, 404, 409),
    },
    openapi_extra=body_schema(PromoteRequest),
)
async def promote(
    name: str, request: Request, response: Response, caller: CallerDep, registry: RegistryDep
) -> NamedModel:
    """Promote one of your succeeded fits as the model's next version (the model is created
    at version 1). A fit whose diagnostics verdict is ``fail`` is refused (409) unless
    ``force`` is true, which the version records. Promoting the current fit again changes
    nothing and answers the model as it is."""
    check_name(name)
    body = await read_model(request, PromoteRequest, DataLimits.for_predictions(caller.settings))
    model, created = await run_in_threadpool(_promote, caller, registry, name, body)
    if created:
        response.status_code = status.HTTP_201_CREATED
        response.headers["Location"] = model.links["self"]
    return model


@router.get("/models/{name}", responses=documented(*COMMON, 404))
def get_model(name: str, caller: CallerDep, registry: RegistryDep) -> NamedModel:
    """The model: its current version and fit, every version (fit, who promoted it and
    when, forced or not, note), and the history of promotions and rollbacks."""
    return registry.get(caller.owner, check_name(name))


@router.post(
    "/models/{name}/rollback",
    responses=documented(*COMMON, 404, 409),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/RollbackRequest"}}
            },
        }
    },
)
async def rollback(
    name: str, request: Request, caller: CallerDep, registry: RegistryDep
) -> NamedModel:
    """Make an earlier version current again (``to_version``, default the current one
    minus one), recorded as a new event: versions are never rewritten. 409 when there is
    no earlier version; asking for the current version changes nothing."""
    check_name(name)
    body = RollbackRequest()
    if (await request.body()).strip():
        limits = DataLimits.for_predictions(caller.settings)
        body = await read_model(request, RollbackRequest, limits)

    def change() -> NamedModel:
        registry.rollback(caller.owner, name, body.to_version)
        return registry.get(caller.owner, name)

    return await run_in_threadpool(change)


@router.delete(
    "/models/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=documented(*COMMON, 404),
)
def delete_model(name: str, caller: CallerDep, registry: RegistryDep) -> Response:
    """Forget the model and its history; its fits stay (and expire with the retention once
    no model uses them)."""
    registry.delete(caller.owner, check_name(name))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/models/{name}/predictions",
    response_model=ModelPredictions,
    responses={
        200: {
            "description": "The predictions, with the version and fit that answered (also in "
            "the X-Model-Version and X-Fit-Id headers).",
        },
        **documented(*COMMON, 404, 409, 429, 500),
    },
    openapi_extra=body_schema(PredictionRequest),
)
async def predict_with_model(
    name: str, request: Request, caller: CallerDep, registry: RegistryDep
) -> Response:
    """Predict new rows with the model's current version (the body of ``POST
    /v1/fits/{id}/predictions``); the answer names the version and the fit that gave it."""
    check_name(name)
    limits = DataLimits.for_predictions(caller.settings)
    prediction = await read_model(request, PredictionRequest, limits)

    def prepare() -> tuple[Current, PredictCall]:
        current = registry.current(caller.owner, name)  # once: this fit for the whole call
        return current, predict_call(caller, current.fit_id, prediction)

    current, call = await run_in_threadpool(prepare)
    answer = await caller.services.dispatcher.call(call, caller.owner)
    return Response(
        with_model(answer, ModelRef(name=name, version=current.version, fit_id=current.fit_id)),
        media_type="application/json",
        headers={"X-Model-Version": str(current.version), "X-Fit-Id": current.fit_id},
    )


def with_model(answer: bytes, model: ModelRef) -> bytes:
    """The worker's JSON object with ``model`` as its first field (spliced, not re-parsed:
    predictions can be large)."""
    body = answer.lstrip()
    if not body.startswith(b"{"):
        raise ValueError("a worker's answer is not a JSON object")
    rest = body[1:].lstrip()
    separator = b"" if rest.startswith(b"}") else b","
    return b'{"model":' + model.model_dump_json().encode() + separator + rest


def _promote(
    caller: Caller, registry: ModelRegistry, name: str, body: PromoteRequest
) -> tuple[NamedModel, bool]:
    """Promote ``body.fit_id`` under ``name``: the model afterwards, and whether it was
    created by this call."""
    record = caller.succeeded(body.fit_id)  # 404 for another key's fit, 409 unless succeeded
    diagnostics = json.loads(caller.services.artifacts.read_result(body.fit_id, DIAGNOSTICS_FILE))
    verdict = diagnostics.get("verdict")
    failed = verdict == Verdict.FAIL
    if failed and not body.force:
        raise ModelConflict(
            f"the fit's diagnostics verdict is fail ({_first_warning(diagnostics)}); its "
            "results should not be served. Fit again with more draws, or send force: true "
            "to promote it anyway (recorded in the model's history)"
        )
    promotion = Promotion(
        fit_id=body.fit_id,
        formula=record.formula,
        family=record.family,
        verdict=verdict,
        forced=failed,
        note=body.note,
    )
    version, changed = registry.promote(caller.owner, name, promotion)
    return registry.get(caller.owner, name), changed and version == 1


def _first_warning(diagnostics: dict[str, object]) -> str:
    warnings = diagnostics.get("warnings")
    if isinstance(warnings, list) and warnings:
        return str(warnings[0])[:300]
    return "see its /diagnostics"
