"""Collaborators the routes need, injected with ``Depends`` (built once per app)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from service.api.dispatch import Dispatcher
from service.core.artifacts import Artifacts
from service.core.jobs import JobStore
from service.core.settings import Settings


@dataclass
class Services:
    """What a request handler may use."""

    settings: Settings
    store: JobStore
    artifacts: Artifacts
    dispatcher: Dispatcher

    @classmethod
    def create(cls, settings: Settings) -> Services:
        """Connect to Redis and prepare the producer (nothing is contacted yet)."""
        redis = Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=2,
            socket_timeout=settings.reply_timeout_s + 10,
            health_check_interval=10,
        )
        store = JobStore(redis, retention_s=settings.retention_s)
        return cls(settings, store, Artifacts(settings.data_dir), Dispatcher(settings, store))


def get_services(request: Request) -> Services:
    """The app's services."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
