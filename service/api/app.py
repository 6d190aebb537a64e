"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from service.api import problems
from service.api.deps import Services
from service.api.routes import router
from service.core.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API: routes, the problem+json error mapping and its services."""
    settings = settings or get_settings()
    app = FastAPI(
        title="hbm-service",
        version="0.1.0",
        summary="Hierarchical Bayesian models as a service.",
        description=(
            "Send grouped data and a Bambi formula; get posterior summaries, partially pooled "
            "group effects, convergence diagnostics and predictions with uncertainty."
        ),
    )
    app.state.services = Services.create(settings)
    problems.install(app)
    app.include_router(router)
    return app
