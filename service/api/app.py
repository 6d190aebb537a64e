"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api import problems
from service.api.deps import Services
from service.api.routes import router
from service.api.security import BodyLimit
from service.core.reconciler import Reconciler, reconcile_once
from service.core.settings import Settings, get_settings


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
        )
        reconciler = Reconciler(step, services.store.redis, settings.reconcile_interval_s)
        reconciler.start()
        # Everything alive at start-up (modules, routes, schemas) lives as long as the
        # process: frozen, full collections skip it. A full collection walked it in 60-70
        # ms, a stall for every request in flight.
        gc.freeze()
        yield
        reconciler.stop()

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
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
