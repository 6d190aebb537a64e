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
from service.api.events import EventHub
from service.api.events import router as events_router
from service.api.metrics import MetricsFlusher, registry_for
from service.api.metrics import router as metrics_router
from service.api.models import router as models_router
from service.api.observability import Observe
from service.api.reconciler import Reconciler, reconcile_once
from service.api.routes import router
from service.api.security import Authenticate, BodyGuard
from service.api.ui import STATIC_URL, static_files
from service.api.ui import router as ui_router
from service.core import logs
from service.core.broker import fits_in_broker
from service.core.models import ModelRegistry
from service.core.schemas import FitRequest, PredictionRequest, PromoteRequest, RollbackRequest
from service.core.settings import Settings, get_settings

#: How long a thread may hold the GIL before another may take it (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005

#: Schemas the OpenAPI document names without a route declaring them: request bodies the
#: routes read themselves (``bodies.read_model``), and the problem details of errors.
BODIES = (FitRequest, PredictionRequest, PromoteRequest, RollbackRequest, problems.Problem)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API: routes, the problem+json error mapping and its services."""
    settings = settings or get_settings()
    # Here, not before uvicorn starts: each of its processes sets up its own logging first.
    logs.configure(settings.log_format, settings.log_level)
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
            notify=lambda fit_id, attempt: services.dispatcher.enqueue_notification(
                fit_id, attempt
            ),
            broker=partial(fits_in_broker, settings, services.store.redis),
        )
        reconciler = Reconciler(step, services.store, settings.reconcile_interval_s)
        reconciler.start()
        flusher.start()
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
        flusher.stop()
        await services.dispatcher.close()
        await hub.close()

    app = FastAPI(
        lifespan=lifespan,
        title="hbm-service",
        version="0.1.0",
        summary="Hierarchical Bayesian models as a service.",
        description=(
            "Send grouped data and a Bambi formula; get posterior summaries, partially pooled "
            "group effects, convergence diagnostics and predictions with uncertainty. "
            "In a browser, `/v1/fits/{id}/report` shows a fit as a page (its live progress "
            "while it runs, then its summary, verdict, group effects, LOO and plots) and "
            "`/v1/ui` lists your fits; with API keys on, open one of them once with "
            "`?key=KEY`. `/v1/fits/{id}/events` streams a fit's progress (Server-Sent Events)."
        ),
    )
    app.state.services = services
    app.state.models = ModelRegistry(services.store)
    flusher = MetricsFlusher(services.store.redis, services.store.prefix)
    app.state.metrics_flusher = flusher
    app.state.metrics_registry = registry_for(services.store, settings)
    problems.install(app)
    app.include_router(router)
    app.include_router(models_router)
    hub = EventHub(settings, services.store)
    app.state.events = hub
    app.include_router(events_router)
    app.include_router(ui_router)
    app.mount(STATIC_URL, static_files(), name="ui-static")
    if settings.metrics_enabled:
        app.include_router(metrics_router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "Idempotency-Key"],
        )
    app.add_middleware(
        BodyGuard,
        limit=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        in_flight_limit=settings.max_bodies_in_flight_bytes,
    )
    app.add_middleware(Authenticate, hashes=settings.api_key_hashes)
    app.add_middleware(Observe, routes=app.routes)  # outermost: first
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
