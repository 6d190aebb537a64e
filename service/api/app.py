"""The FastAPI application factory."""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from service.api import problems
from service.api.deps import Services
from service.api.reconciler import Reconciler, reconcile_once
from service.api.routes import router
from service.api.security import Authenticate, BodyGuard
from service.core.schemas import FitRequest, PredictionRequest
from service.core.settings import Settings, get_settings

#: How long a thread may hold the GIL before another may take it (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005

#: Schemas the OpenAPI document names without a route declaring them: request bodies the
#: routes read themselves (``bodies.read_model``), and the problem details of errors.
BODIES = (FitRequest, PredictionRequest, problems.Problem)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API: routes, the problem+json error mapping and its services."""
    settings = settings or get_settings()
    services = Services.create(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        step = partial(
            reconcile_once,
            services.store,
            services.artifacts,
            services.dispatcher.enqueue_fit,
            queue=settings.fit_queue,
            retention_s=settings.retention_s,
            grace_s=settings.lock_grace_s,
        )
        reconciler = Reconciler(step, services.store, settings.reconcile_interval_s)
        reconciler.start()
        # Everything alive at start-up (modules, routes, schemas) lives as long as the
        # process: frozen, full collections skip it. A full collection walked it in 60-70
        # ms, a stall for every request in flight.
        gc.freeze()
        # Bodies are parsed and validated in worker threads, and a thread may hold the GIL
        # for a whole switch interval while the event loop needs it many times to answer
        # one request: with Python's 5 ms, parsing a 48 MiB CSV upload stalled health
        # checks for 470 ms; with 0.5 ms the slowest answer was 4 ms.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        yield
        reconciler.stop()
        await services.dispatcher.close()

    app = FastAPI(
        lifespan=lifespan,
        title="hbm-service",
        version="0.1.0",
        summary="Hierarchical Bayesian models as a service.",
        description=(
            "Send grouped data and a Bambi formula; get posterior summaries, partially pooled "
            "group effects, convergence diagnostics and predictions with uncertainty."
        ),
    )
    app.state.services = services
    problems.install(app)
    app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "Idempotency-Key"],
        )
    app.add_middleware(
        BodyGuard,
        limit=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        in_flight_limit=settings.max_bodies_in_flight_bytes,
    )
    app.add_middleware(Authenticate, hashes=settings.api_key_hashes)  # outermost: first
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the schemas of the bodies routes read themselves."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for model in BODIES:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
        app.openapi_schema = document
    return app.openapi_schema
