"""The one place where job state lives: a Redis hash per fit.

Keys (all under ``{prefix}:``)::

    fit:{id}        hash: meta (immutable request facts), status, attempts, progress,
                    timings, versions, error, started_at, finished_at, cancel
                    (JSON-encoded fields); expires ``retention`` after the fit is final
    fits            sorted set of ids by creation time, for listing and sweeping
    owned:{owner}   the same, per API key (``owner`` is a digest of the key)
    active:{owner}  that key's queued or running fits, for its concurrency limit
    rate:{owner}:{minute}  submissions counted for the per-key quota
    active          set of ids that are queued or running, for the reconciler
    lock:{id}       held by the one worker process running the fit, refreshed by its
                    heartbeat; a running fit whose lock expired has lost its worker
    dedup:{key}     fit id for an idempotency key or a seeded request's content hash
    reply:{token}   short-lived list where a worker pushes the answer to a synchronous call

Celery's result backend is not used: it reports unknown ids as PENDING and forgets results.
Status changes that race (cancel against start, finish against cancel) are Lua scripts, so
each is one atomic step in Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
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

# Create a fit only once (two identical requests racing create it once).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'status', 'queued', 'attempts', 0, 'owner', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[3])
return 1
"""

# Start a run only if the fit is still queued or running (a retry): never after cancel.
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return -1 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# Cancel: a queued fit is cancelled at once; a running one is flagged for its worker.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  redis.call('SREM', ARGV[3] .. (redis.call('HGET', KEYS[1], 'owner') or ''), ARGV[2])
  return 'cancelled'
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'running'
end
return status or ''
"""

# Re-queue a fit whose worker was lost: only if it is still running and nobody holds it.
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'progress')
return 1
"""

# Release a lock only if this run still holds it; refresh likewise.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def new_fit_id() -> str:
    """A fresh, unguessable fit id."""
    return uuid.uuid4().hex


def is_fit_id(value: str) -> bool:
    """True if ``value`` has the shape of a fit id (so it is safe in keys and paths)."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class ActiveState:
    """A queued or running fit as the reconciler sees it (status None: record expired)."""

    fit_id: str
    status: FitStatus | None
    created_at: float  # seconds since the epoch
    lock_held: bool


class JobStore:
    """Reads and writes fit records in Redis."""

    def __init__(self, redis: Redis, prefix: str = "hbm", retention_s: int | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.retention_s = retention_s
        self._create = redis.register_script(_CREATE)
        self._start = redis.register_script(_START)
        self._cancel = redis.register_script(_CANCEL)
        self._requeue = redis.register_script(_REQUEUE)
        self._release = redis.register_script(_RELEASE)
        self._refresh = redis.register_script(_REFRESH)

    def _key(self, fit_id: str) -> str:
        return f"{self.prefix}:fit:{fit_id}"

    def _lock(self, fit_id: str) -> str:
        return f"{self.prefix}:lock:{fit_id}"

    @property
    def _active(self) -> str:
        return f"{self.prefix}:active"

    @property
    def _all(self) -> str:
        """Every fit id, scored by its creation time."""
        return f"{self.prefix}:fits"

    def reply_key(self, token: str) -> str:
        """The list a worker pushes a synchronous answer to."""
        return f"{self.prefix}:reply:{token}"

    # ------------------------------------------------------------------ creation, reads

    def claim(self, key: str, fit_id: str, ttl_s: int) -> str:
        """The fit id already recorded for ``key``, or ``fit_id`` if this call claimed it."""
        name = f"{self.prefix}:dedup:{key}"
        if self.redis.set(name, fit_id, nx=True, ex=ttl_s):
            return fit_id
        existing = self.redis.get(name)
        return existing.decode() if isinstance(existing, bytes) else fit_id

    def create(self, fit_id: str, spec: FitSpec, owner: str = "") -> FitResource:
        """Record a new fit as queued (an existing record with this id is kept as it is)."""
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
        self._create(
            keys=[
                self._key(fit_id),
                self._all,
                self._active,
                self._owned(owner),
                self._active_of(owner),
            ],
            args=[json.dumps(meta), now.timestamp(), fit_id, owner],
        )
        record = self.get(fit_id)
        assert record is not None
        return record

    def get(self, fit_id: str) -> FitResource | None:
        """The fit's record, or None if there is no such fit."""
        raw: dict[bytes, bytes] = self.redis.hgetall(self._key(fit_id))  # type: ignore[assignment]
        if not raw or b"meta" not in raw:
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

    def _owned(self, owner: str) -> str:
        return f"{self.prefix}:owned:{owner}"

    def _active_of(self, owner: str) -> str:
        return f"{self.prefix}:active:{owner}"

    def active_count(self, owner: str) -> int:
        """How many of ``owner``'s fits are queued or running."""
        return int(self.redis.scard(self._active_of(owner)))

    def owner(self, fit_id: str) -> str | None:
        """Who created the fit (an API key's digest; empty without keys), None if unknown."""
        value = self.redis.hget(self._key(fit_id), "owner")
        return value.decode() if isinstance(value, bytes) else None

    def list_ids(self, offset: int, limit: int, owner: str | None = None) -> list[str]:
        """Fit ids, newest first; only ``owner``'s when given."""
        key = self._all if owner is None else self._owned(owner)
        ids = self.redis.zrevrange(key, offset, offset + limit - 1)
        return [i.decode() for i in ids]  # type: ignore[union-attr]

    def count_submission(self, owner: str, window_s: int = 60) -> tuple[int, int]:
        """Count a submission in ``owner``'s current window: (count so far, seconds left)."""
        now = int(time.time())
        window = now // window_s
        key = f"{self.prefix}:rate:{owner}:{window}"
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, window_s)
        count, _ = pipe.execute()
        return int(count), window_s - now % window_s

    def active_ids(self) -> list[str]:
        """Ids of fits that are queued or running."""
        return sorted(i.decode() for i in self.redis.smembers(self._active))  # type: ignore[union-attr]

    def active_states(self) -> list[ActiveState]:
        """What the reconciler needs of every queued or running fit, in one round trip
        (a thousand queued fits cost one pipeline, not three thousand calls)."""
        ids = self.active_ids()
        pipe = self.redis.pipeline(transaction=False)
        for fit_id in ids:
            pipe.hget(self._key(fit_id), "status")
            pipe.zscore(self._all, fit_id)
            pipe.exists(self._lock(fit_id))
        answers = pipe.execute()
        states = []
        for i, fit_id in enumerate(ids):
            status, created, locked = answers[3 * i : 3 * i + 3]
            states.append(
                ActiveState(
                    fit_id=fit_id,
                    status=FitStatus(status.decode()) if status else None,
                    created_at=float(created) if created is not None else 0.0,
                    lock_held=bool(locked),
                )
            )
        return states

    # ------------------------------------------------------------------------ runs

    def acquire_lock(self, fit_id: str, token: str, ttl_s: int) -> bool:
        """Take the run lock; False if another live run holds it."""
        return bool(self.redis.set(self._lock(fit_id), token, nx=True, ex=ttl_s))

    def refresh_lock(self, fit_id: str, token: str, ttl_s: int) -> bool:
        """Extend the run lock (the heartbeat); False if it was lost."""
        return bool(self._refresh(keys=[self._lock(fit_id)], args=[token, ttl_s]))

    def release_lock(self, fit_id: str, token: str) -> None:
        """Give the run lock back if this run holds it."""
        self._release(keys=[self._lock(fit_id)], args=[token])

    def lock_held(self, fit_id: str) -> bool:
        """Whether a live run holds the fit (its heartbeat is fresh)."""
        return bool(self.redis.exists(self._lock(fit_id)))

    def start_attempt(self, fit_id: str) -> int | None:
        """Mark the fit running and return the attempt number; None if it was cancelled."""
        attempts = int(self._start(keys=[self._key(fit_id)], args=[utcnow().isoformat()]))
        return None if attempts < 0 else attempts

    def requeue(self, fit_id: str) -> bool:
        """Put a running fit whose lock expired back to queued; False if it was not (it
        finished or was picked up meanwhile). A new message must follow a True."""
        return bool(self._requeue(keys=[self._key(fit_id), self._lock(fit_id)]))

    def set_progress(self, fit_id: str, progress: Progress) -> None:
        """Replace the progress of a running fit."""
        self.redis.hset(self._key(fit_id), "progress", progress.model_dump_json())

    def request_cancel(self, fit_id: str) -> FitStatus | None:
        """Cancel a queued fit now, or flag a running one; the resulting status."""
        status = self._cancel(
            keys=[self._key(fit_id), self._active],
            args=[utcnow().isoformat(), fit_id, self._active_of("")],
        )
        text = status.decode() if isinstance(status, bytes) else str(status)
        return FitStatus(text) if text else None

    def cancel_requested(self, fit_id: str) -> bool:
        """Whether a client asked to cancel this running fit."""
        return self.redis.hget(self._key(fit_id), "cancel") == b"1"

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
        owner = self.owner(fit_id) or ""
        pipe = self.redis.pipeline()
        pipe.hset(self._key(fit_id), mapping=fields)
        pipe.hdel(self._key(fit_id), "progress", "cancel")
        pipe.srem(self._active, fit_id)
        pipe.srem(self._active_of(owner), fit_id)
        if self.retention_s:
            pipe.expire(self._key(fit_id), self.retention_s)
        pipe.execute()

    def created_before(self, timestamp: float) -> list[str]:
        """Ids of fits created before ``timestamp`` (seconds since the epoch)."""
        ids = self.redis.zrangebyscore(self._all, 0, timestamp)
        return [i.decode() for i in ids]  # type: ignore[union-attr]

    def forget_active(self, fit_id: str) -> None:
        """Drop a fit from the active sets (it is final or gone)."""
        owner = self.owner(fit_id) or ""
        self.redis.srem(self._active, fit_id)
        self.redis.srem(self._active_of(owner), fit_id)

    def delete(self, fit_id: str) -> None:
        """Forget a fit entirely."""
        owner = self.owner(fit_id) or ""
        pipe = self.redis.pipeline()
        pipe.zrem(self._owned(owner), fit_id)
        pipe.srem(self._active_of(owner), fit_id)
        pipe.delete(self._key(fit_id))
        pipe.zrem(self._all, fit_id)
        pipe.srem(self._active, fit_id)
        pipe.execute()


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
