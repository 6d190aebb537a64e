"""What the tasks of one worker process share, created on first use (after the pool forks)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from redis import Redis

from service.core.artifacts import Artifacts
from service.core.jobs import JobStore
from service.core.settings import Settings, get_settings
from service.core.storage import storage_for
from worker.modeling.cache import FittedModelCache
from worker.modeling.compiled import CompiledModels


@dataclass
class Context:
    """The settings, the job store, the fit files and the model caches of a process."""

    settings: Settings
    store: JobStore
    artifacts: Artifacts
    cache: FittedModelCache
    compiled: CompiledModels


def connect(settings: Settings) -> Redis:
    """A Redis client whose calls give up after ``redis_timeout_s`` (a hung Redis must not
    hang a fit's bookkeeping; callers retry, see ``worker.resilience``)."""
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=10,
    )


@cache
def context() -> Context:
    """The process's context."""
    settings = get_settings()
    artifacts = Artifacts(storage_for(settings))
    return Context(
        settings=settings,
        store=JobStore(connect(settings), retention_s=settings.retention_s),
        artifacts=artifacts,
        cache=FittedModelCache(artifacts, settings.model_cache_size),
        compiled=CompiledModels(settings.compiled_cache_size),
    )
