"""The one place where job state lives: a Redis hash per fit.

Keys (all under ``{prefix}:``)::

    fit:{id}        hash: meta (immutable request facts), status, attempts, progress,
                    timings, versions, error, started_at, finished_at  (JSON-encoded fields)
    fits            sorted set of ids by creation time, for listing
    reply:{token}   short-lived list where a worker pushes the answer to a synchronous call

Celery's result backend is not used: it reports unknown ids as PENDING and forgets results.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from service.core.schemas import (
    FitError,
    FitResource,
    FitSpec,
    FitStatus,
    Progress,
    ResolvedSampler,
    Timings,
)


def new_fit_id() -> str:
    """A fresh, unguessable fit id."""
    return uuid.uuid4().hex


def is_fit_id(value: str) -> bool:
    """True if ``value`` has the shape of a fit id (so it is safe in keys and paths)."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


class JobStore:
    """Reads and writes fit records in Redis."""

    def __init__(self, redis: Redis, prefix: str = "hbm") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, fit_id: str) -> str:
        return f"{self.prefix}:fit:{fit_id}"

    def reply_key(self, token: str) -> str:
        """The list a worker pushes a synchronous answer to."""
        return f"{self.prefix}:reply:{token}"

    def create(self, fit_id: str, spec: FitSpec) -> FitResource:
        """Record a new fit as queued."""
        now = utcnow()
        meta = {
            "formula": spec.formula,
            "family": spec.family,
            "name": spec.name,
            "n_obs": len(next(iter(spec.columns.values()))),
            "n_dropped": spec.n_dropped,
            "sampler": spec.sampler.model_dump(),
            "created_at": now.isoformat(),
        }
        pipe = self.redis.pipeline()
        pipe.hset(
            self._key(fit_id),
            mapping={"meta": json.dumps(meta), "status": FitStatus.QUEUED.value, "attempts": 0},
        )
        pipe.zadd(f"{self.prefix}:fits", {fit_id: now.timestamp()})
        pipe.execute()
        record = self.get(fit_id)
        assert record is not None
        return record

    def get(self, fit_id: str) -> FitResource | None:
        """The fit's record, or None if there is no such fit."""
        raw: dict[bytes, bytes] = self.redis.hgetall(self._key(fit_id))  # type: ignore[assignment]
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        meta = json.loads(fields["meta"])

        def load(name: str) -> Any:
            value = fields.get(name)
            return json.loads(value) if value else None

        return FitResource(
            id=fit_id,
            status=FitStatus(fields["status"]),
            name=meta["name"],
            formula=meta["formula"],
            family=meta["family"],
            n_obs=meta["n_obs"],
            n_dropped=meta.get("n_dropped", 0),
            sampler=ResolvedSampler(**meta["sampler"]),
            created_at=datetime.fromisoformat(meta["created_at"]),
            started_at=_time(fields.get("started_at")),
            finished_at=_time(fields.get("finished_at")),
            attempts=int(fields.get("attempts", 0)),
            progress=Progress(**load("progress")) if load("progress") else None,
            timings=Timings(**(load("timings") or {})),
            versions=load("versions") or {},
            error=FitError(**load("error")) if load("error") else None,
        )

    def status(self, fit_id: str) -> FitStatus | None:
        """Just the status (cheap), or None for an unknown fit."""
        value = self.redis.hget(self._key(fit_id), "status")
        return FitStatus(value.decode()) if isinstance(value, bytes) else None

    def start_attempt(self, fit_id: str) -> int:
        """Mark the fit running and return which attempt this is (1 for the first run)."""
        pipe = self.redis.pipeline()
        pipe.hincrby(self._key(fit_id), "attempts", 1)
        pipe.hset(
            self._key(fit_id),
            mapping={"status": FitStatus.RUNNING.value, "started_at": utcnow().isoformat()},
        )
        attempts, _ = pipe.execute()
        return int(attempts)

    def set_progress(self, fit_id: str, progress: Progress) -> None:
        """Replace the progress of a running fit."""
        self.redis.hset(self._key(fit_id), "progress", progress.model_dump_json())

    def finish(
        self,
        fit_id: str,
        status: FitStatus,
        *,
        timings: Timings | None = None,
        versions: dict[str, str] | None = None,
        error: FitError | None = None,
    ) -> None:
        """Record a final status, with timings, library versions or the error."""
        fields: dict[Any, Any] = {"status": status.value, "finished_at": utcnow().isoformat()}
        if timings is not None:
            fields["timings"] = timings.model_dump_json()
        if versions is not None:
            fields["versions"] = json.dumps(versions)
        if error is not None:
            fields["error"] = error.model_dump_json()
        pipe = self.redis.pipeline()
        pipe.hset(self._key(fit_id), mapping=fields)
        pipe.hdel(self._key(fit_id), "progress")
        pipe.execute()

    def list_ids(self, offset: int, limit: int) -> list[str]:
        """Fit ids, newest first."""
        ids = self.redis.zrevrange(f"{self.prefix}:fits", offset, offset + limit - 1)
        return [i.decode() for i in ids]  # type: ignore[union-attr]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
