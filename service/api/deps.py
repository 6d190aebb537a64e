"""Collaborators the routes need, injected with ``Depends`` (built once per app)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from service.api.dispatch import Dispatcher
from service.api.specs import SpecCache
from service.core.artifacts import Artifacts
from service.core.errors import NotFound, NotReady
from service.core.jobs import JobStore, is_fit_id
from service.core.schemas import FitResource, FitStatus
from service.core.settings import Settings
from service.core.storage import storage_for


@dataclass
class Services:
    """What a request handler may use."""

    settings: Settings
    store: JobStore
    artifacts: Artifacts
    dispatcher: Dispatcher
    specs: SpecCache = field(init=False)

    def __post_init__(self) -> None:
        self.specs = SpecCache(self.artifacts)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        """Connect to Redis and prepare the producer (nothing is contacted yet)."""
        redis = Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            health_check_interval=10,
        )
        store = JobStore(redis, retention_s=settings.retention_s)
        return cls(settings, store, Artifacts(storage_for(settings)), Dispatcher(settings, store))


async def get_services(request: Request) -> Services:
    """The app's services."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass
class Caller:
    """One request's view: the services, and the owner (API key digest) it acts for."""

    services: Services
    owner: str

    @property
    def settings(self) -> Settings:
        """The service's settings."""
        return self.services.settings

    def fit(self, fit_id: str) -> FitResource:
        """The caller's fit; 404 for unknown ids and for other keys' fits alike."""
        store = self.services.store
        record = store.get(fit_id) if is_fit_id(fit_id) else None
        if record is None or store.owner(fit_id) != self.owner:
            raise NotFound(f"there is no fit '{fit_id[:64]}'")
        return record

    def succeeded(self, fit_id: str) -> FitResource:
        """The caller's fit, which must have succeeded (409 otherwise)."""
        record = self.fit(fit_id)
        if record.status is not FitStatus.SUCCEEDED:
            raise NotReady(f"the fit is {record.status.value}; results exist once it has succeeded")
        return record
