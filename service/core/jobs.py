"""The one place where job state lives: a Redis hash per fit, and every other key the
service keeps in Redis.

Keys (all under ``{prefix}:``)::

    fit:{id}        hash: meta (immutable request facts), owner, dedup (the dedup keys that
                    point at this fit), status, attempts, progress, timings, versions, error,
                    started_at, finished_at, cancel (JSON-encoded fields), events (how
                    many changes were published); expires ``retention`` after the fit is final
    fits            sorted set of ids by creation time, for listing and sweeping
    owned:{owner}   the same, per API key (``owner`` is a digest of the key)
    active:{owner}  that key's queued or running fits, for its concurrency limit
    rate:{owner}:{what}:{window}  fits created or calls made, for a per-key quota
    active          set of ids that are queued or running, for the reconciler
    lock:{id}       held by the one worker process running the fit, refreshed by its
                    heartbeat; a running fit whose lock expired has lost its worker
    suspect:{id}    when the reconciler first saw a running fit without its lock: it is
                    re-queued only if the lock stays missing for a grace period (a Redis
                    outage expires locks that live runs take back within a second)
    dedup:{key}     "{fit id}:{request digest}" for an Idempotency-Key or a seeded request's
                    content hash; dropped when the fit is deleted, cancelled or failed by an
                    infrastructure fault, so that the same request then makes a new fit
    gone:{id}       a deleted fit's tombstone: its id is never used again
    reply:{token}   short-lived list where a worker pushes the answer to a synchronous call
    call:{token}    which worker process took a synchronous call (so the API can tell a
                    call whose worker died from a slow one)
    workers:{queue} sorted set of live worker processes consuming a queue, scored by when
                    their presence expires
    reconciler      held by the API process whose reconciler acts in this interval
    metrics:{name}  hash: a metric's totals (``service.core.metrics``); the scripts that make
                    a fit final count it in ``metrics:hbm_fits_finished_total``
    notify          sorted set of fits whose notification (``notify_url``) is pending,
                    scored by when its next attempt is due: the scripts that make a fit final
                    add it; the reconciler sends again what is overdue (``service.core.webhooks``)
    notify:sent:{id}:{status}  the first attempt of that notification was sent (once)
    notify:lock:{id}  held by the worker making an attempt at the fit's notification
    model:{owner}:{name}, model:{owner}:{name}:history, models:{owner}
                    named models (``service.core.models``: ``ModelRegistry``)
    usedby:{id}     the names of the models whose versions serve the fit: while it is not
                    empty the fit cannot be deleted and its record does not expire

Channel (pub/sub, not a key): ``events:{id}`` carries a notice each time a fit's status or
progress changes (the new ``events`` number; 0 when the fit was deleted), published in the
same atomic step as the change. The API's event streams subscribe to ``events:*`` and
re-read the record; a notice carries no state, so a missed one costs only freshness.

Celery's result backend is not used: it reports unknown ids as PENDING and forgets results.
Status changes that race (cancel against start, finish against cancel, a lost lock against
its run) are Lua scripts, so each is one atomic step in Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from redis import Redis

from service.core.errors import TooManyRequests
from service.core.logs import current_request_id
from service.core.metrics import FITS_SUBMITTED, RECORDER
from service.core.schemas import (
    FitError,
    FitResource,
    FitSpec,
    FitStatus,
    Notification,
    Progress,
    ResolvedSampler,
    Timings,
)

# Map a dedup key to a fit id, bound to the request's digest. An existing mapping answers
# (same digest: 'existing'; another digest: 'conflict') unless its fit was deleted.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  local id = string.sub(current, 1, sep - 1)
  if redis.call('EXISTS', ARGV[4] .. 'gone:' .. id) == 0 then
    if string.sub(current, sep + 1) ~= ARGV[2] then return {'conflict', id} end
    return {'existing', id}
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[3])
return {'claimed', ARGV[1]}
"""

# Create a fit only once (two identical requests racing create it once); never reuse the
# id of a deleted fit. 1: created, 0: it exists, -1: the id was deleted.
_CREATE = """
if redis.call('EXISTS', KEYS[6]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[6]) then return -2 end
if tonumber(redis.call('GET', KEYS[7]) or '0') >= tonumber(ARGV[7]) then return -3 end
redis.call('INCR', KEYS[7])
redis.call('EXPIRE', KEYS[7], ARGV[8])
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'status', 'queued', 'attempts', 0,
           'owner', ARGV[4], 'dedup', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[3])
return 1
"""

# Prepended to every script that changes a fit's status or progress: count the change in
# the record and publish its number on the fit's channel (what event streams listen to).
_NOTIFY = """
local function notify(fit_key, channel)
  redis.call('PUBLISH', channel, redis.call('HINCRBY', fit_key, 'events', 1))
end
"""

# Start a run only if the fit is still queued or running (a retry): never after cancel.
_START = (
    _NOTIFY
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return -1 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
notify(KEYS[1], ARGV[2])
return attempts
"""
)

# Replace a fit's progress (never recreating a record that expired or was deleted).
_PROGRESS = (
    _NOTIFY
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
notify(KEYS[1], ARGV[2])
return 1
"""
)

# Shared tail of the scripts that make a fit final: leave the active sets, expire after the
# retention, queue the fit's notification if it has a notify_url (``notify``), and drop the
# dedup keys when the final state is not the request's answer.
_FINAL_TAIL = """
local function queue_notification(fit_key, id, prefix)
  local meta = cjson.decode(redis.call('HGET', fit_key, 'meta') or '{}')
  if type(meta['notify_url']) == 'string' then
    redis.call('ZADD', prefix .. 'notify', redis.call('TIME')[1], id)
  end
end
local function leave_active(fit_key, id, prefix, retention)
  -- called once per fit, as it becomes final: count the end (service.core.metrics)
  local status = redis.call('HGET', fit_key, 'status')
  local reason = ''
  if status == 'failed' then
    local ok, err = pcall(cjson.decode, redis.call('HGET', fit_key, 'error') or '{}')
    if ok and type(err) == 'table' and err.reason then reason = err.reason end
  end
  redis.call('HINCRBY', prefix .. 'metrics:hbm_fits_finished_total',
             cjson.encode({status, reason}), 1)
  local owner = redis.call('HGET', fit_key, 'owner') or ''
  redis.call('SREM', prefix .. 'active', id)
  redis.call('SREM', prefix .. 'active:' .. owner, id)
  if retention ~= '0' then redis.call('EXPIRE', fit_key, retention) end
  queue_notification(fit_key, id, prefix)
end
local function drop_dedup(fit_key)
  local keys = cjson.decode(redis.call('HGET', fit_key, 'dedup') or '[]')
  for _, key in ipairs(keys) do redis.call('DEL', key) end
end
"""

# Cancel: a queued fit is cancelled at once; a running one is flagged for its worker, whose
# finish turns the flag into 'cancelled' atomically. Answers the status after the call.
_CANCEL = (
    _FINAL_TAIL
    + _NOTIFY
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'progress', 'cancel')
  leave_active(KEYS[1], ARGV[2], ARGV[3], ARGV[4])
  drop_dedup(KEYS[1])
  notify(KEYS[1], ARGV[3] .. 'events:' .. ARGV[2])
  return 'cancelled'
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'running'
end
return status or ''
"""
)

# Finish a run: only the run holding the lock (or a run whose lock lapsed unclaimed) may;
# a cancel flag set before this step makes the fit 'cancelled' whatever the run wanted.
# Answers the final status, 'lost' (another run holds the fit) or the status it already had.
_FINISH = (
    _FINAL_TAIL
    + _NOTIFY
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if status ~= 'running' and status ~= 'queued' then return status end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return 'lost' end
local final = ARGV[1]
if redis.call('HGET', KEYS[1], 'cancel') == '1' then final = 'cancelled' end
redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[3])
if final == ARGV[1] then
  for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('HDEL', KEYS[1], 'progress', 'cancel')
redis.call('DEL', KEYS[2])
leave_active(KEYS[1], ARGV[7], ARGV[5], ARGV[4])
if final == 'cancelled' or ARGV[6] == '1' then drop_dedup(KEYS[1]) end
notify(KEYS[1], ARGV[5] .. 'events:' .. ARGV[7])
return final
"""
)

# Re-queue a fit whose worker was lost: only if it is still running, nobody holds it, and
# its lock has been missing for the grace period (a live run retakes it well before).
_REQUEUE = (
    _NOTIFY
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[3])
  return 0
end
if tonumber(ARGV[2]) > 0 then
  local since = redis.call('GET', KEYS[3])
  if not since then
    redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
    return 0
  end
  if tonumber(ARGV[1]) - tonumber(since) < tonumber(ARGV[2]) then return 0 end
end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'progress')
notify(KEYS[1], ARGV[4])
return 1
"""
)

# Release a lock only if this run still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The heartbeat: extend this run's lock (1); take it back if it lapsed while nobody else
# took it and the fit is still in progress (2); else the run has lost the fit (0).
_REFRESH = (
    _NOTIFY
    + """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'running' and status ~= 'queued' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if status == 'queued' then
  redis.call('HSET', KEYS[2], 'status', 'running')
  notify(KEYS[2], ARGV[3])
end
redis.call('DEL', KEYS[3])
return 2
"""
)

# Delete a finished fit: its record, its listings and dedup keys; leave a tombstone.
_DELETE = (
    _FINAL_TAIL
    + """
local users = redis.call('SMEMBERS', ARGV[2] .. 'usedby:' .. ARGV[1])
if #users > 0 then return users end
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
drop_dedup(KEYS[1])
redis.call('ZREM', ARGV[2] .. 'owned:' .. owner, ARGV[1])
redis.call('SREM', ARGV[2] .. 'active:' .. owner, ARGV[1])
redis.call('DEL', KEYS[1], ARGV[2] .. 'lock:' .. ARGV[1], ARGV[2] .. 'suspect:' .. ARGV[1])
redis.call('ZREM', ARGV[2] .. 'fits', ARGV[1])
redis.call('SREM', ARGV[2] .. 'active', ARGV[1])
redis.call('SET', ARGV[2] .. 'gone:' .. ARGV[1], '1', 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[2] .. 'events:' .. ARGV[1], 0)
return 1
"""
)

# The first attempt of a fit's notification is sent once: only while it is pending (in the
# ``notify`` set), for the status the fit ended with, by the first caller.
_CLAIM_NOTIFICATION = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[3], 'status') ~= ARGV[3] then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return 1 end
return 0
"""

# Write a notification's state (never recreating a deleted or expired record) and when its
# next attempt is due ('' : none, it is over).
_RECORD_NOTIFICATION = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 0
end
redis.call('HSET', KEYS[1], 'notification', ARGV[1])
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return 1
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


class Claim(StrEnum):
    """What a dedup key said: a new fit, the fit of the same request, or a conflict."""

    CLAIMED = "claimed"
    EXISTING = "existing"
    CONFLICT = "conflict"


class Refresh(StrEnum):
    """What a heartbeat found: its lock extended, taken back, or lost to another run."""

    EXTENDED = "extended"
    RETAKEN = "retaken"
    LOST = "lost"


@dataclass(frozen=True)
class FitQuota:
    """An owner's limits on fits: in progress at once, and created a minute."""

    max_active: int = 2**31
    per_minute: int = 2**31


@dataclass(frozen=True)
class ActiveState:
    """A queued or running fit as the reconciler sees it (status None: record expired)."""

    fit_id: str
    status: FitStatus | None
    created_at: float  # seconds since the epoch
    lock_held: bool


class JobStore:
    """Reads and writes fit records (and every other key of the service) in Redis."""

    def __init__(self, redis: Redis, prefix: str = "hbm", retention_s: int | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.retention_s = retention_s
        self._claim = redis.register_script(_CLAIM)
        self._create = redis.register_script(_CREATE)
        self._start = redis.register_script(_START)
        self._progress = redis.register_script(_PROGRESS)
        self._cancel = redis.register_script(_CANCEL)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)
        self._release = redis.register_script(_RELEASE)
        self._refresh = redis.register_script(_REFRESH)
        self._delete = redis.register_script(_DELETE)
        self._claim_notification = redis.register_script(_CLAIM_NOTIFICATION)
        self._record_notification = redis.register_script(_RECORD_NOTIFICATION)

    # ------------------------------------------------------------------------ key names

    def _key(self, fit_id: str) -> str:
        return f"{self.prefix}:fit:{fit_id}"

    def record_key(self, fit_id: str) -> str:
        """The key of the fit's record (a hash)."""
        return self._key(fit_id)

    def used_by_key(self, fit_id: str) -> str:
        """The set of the named models that use the fit (``service.core.models``)."""
        return f"{self.prefix}:usedby:{fit_id}"

    def _lock(self, fit_id: str) -> str:
        return f"{self.prefix}:lock:{fit_id}"

    def _suspect(self, fit_id: str) -> str:
        return f"{self.prefix}:suspect:{fit_id}"

    def _gone(self, fit_id: str) -> str:
        return f"{self.prefix}:gone:{fit_id}"

    def _dedup(self, key: str) -> str:
        return f"{self.prefix}:dedup:{key}"

    def _owned(self, owner: str) -> str:
        return f"{self.prefix}:owned:{owner}"

    def _active_of(self, owner: str) -> str:
        return f"{self.prefix}:active:{owner}"

    def _workers(self, queue: str) -> str:
        return f"{self.prefix}:workers:{queue}"

    def events_channel(self, fit_id: str) -> str:
        """The pub/sub channel where changes of the fit's status and progress are noticed."""
        return f"{self.prefix}:events:{fit_id}"

    @property
    def events_pattern(self) -> str:
        """The pattern matching every fit's events channel."""
        return self.events_channel("*")

    def fit_of_channel(self, channel: str) -> str:
        """The fit id an events channel is about."""
        return channel.removeprefix(self.events_channel(""))

    @property
    def _active(self) -> str:
        return f"{self.prefix}:active"

    @property
    def _all(self) -> str:
        """Every fit id, scored by its creation time."""
        return f"{self.prefix}:fits"

    @property
    def _retention(self) -> str:
        return str(self.retention_s or 0)

    def reply_key(self, token: str) -> str:
        """The list a worker pushes a synchronous answer to."""
        return f"{self.prefix}:reply:{token}"

    def call_key(self, token: str) -> str:
        """Where the worker process that took a synchronous call writes its name."""
        return f"{self.prefix}:call:{token}"

    # ------------------------------------------------------------------ creation, reads

    def claim(self, key: str, fit_id: str, digest: str, ttl_s: int) -> tuple[Claim, str]:
        """Bind ``key`` to ``fit_id`` and the request's ``digest``, unless it is bound
        already: then the fit id it names, and whether the digests agree."""
        outcome, claimed = self._claim(
            keys=[self._dedup(key)], args=[fit_id, digest, ttl_s, f"{self.prefix}:"]
        )
        return Claim(outcome.decode()), claimed.decode()

    def create(
        self,
        fit_id: str,
        spec: FitSpec,
        owner: str = "",
        dedup: tuple[str, ...] = (),
        quota: FitQuota | None = None,
        notify_url: str | None = None,
    ) -> bool | None:
        """Record a new fit as queued: True if this call created it, False if it existed
        already, None if the id belongs to a deleted fit (it is never used again). A
        ``notify_url`` is notified when the fit ends (``service.core.webhooks``).

        With a ``quota``, the owner's fits in progress and fits created this minute are
        checked and counted in the same atomic step (:class:`TooManyRequests` beyond), so
        that concurrent submissions cannot all pass a check made before any of them counts.
        """
        quota = quota or FitQuota()
        rate_key, reset_s = self._rate(owner, "fits", 60)
        now = utcnow()
        meta = {
            "formula": spec.formula,
            "family": spec.family,
            "name": spec.name,
            "n_obs": len(next(iter(spec.columns.values()))),
            "n_dropped": spec.n_dropped,
            "sampler": spec.sampler.model_dump(),
            "created_at": now.isoformat(),
            "request_id": current_request_id(),
        }
        if notify_url is not None:
            meta["notify_url"] = notify_url
        created = int(
            self._create(
                keys=[
                    self._key(fit_id),
                    self._all,
                    self._active,
                    self._owned(owner),
                    self._active_of(owner),
                    self._gone(fit_id),
                    rate_key,
                ],
                args=[
                    json.dumps(meta),
                    now.timestamp(),
                    fit_id,
                    owner,
                    json.dumps([self._dedup(key) for key in dedup]),
                    quota.max_active,
                    quota.per_minute,
                    60,
                ],
            )
        )
        if created == -2:
            raise TooManyRequests(
                f"{quota.max_active} fits are already queued or running", retry_after=30
            )
        if created == -3:
            raise TooManyRequests(f"over {quota.per_minute} fits a minute", retry_after=reset_s)
        if created == 1:
            RECORDER.inc(FITS_SUBMITTED)
        return None if created < 0 else bool(created)

    def get(self, fit_id: str) -> FitResource | None:
        """The fit's record, or None if there is no such fit."""
        return self.get_versioned(fit_id)[0]

    def get_versioned(self, fit_id: str) -> tuple[FitResource | None, int]:
        """The fit's record (None if there is no such fit) and how many changes of its
        status or progress were published so far (event streams number events by it)."""
        raw: dict[bytes, bytes] = self.redis.hgetall(self._key(fit_id))  # type: ignore[assignment]
        if not raw or b"meta" not in raw:
            return None, 0
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        meta = json.loads(fields["meta"])

        def load(name: str) -> Any:
            value = fields.get(name)
            return json.loads(value) if value else None

        record = FitResource(
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
            request_id=meta.get("request_id"),
            notification=_notification(meta.get("notify_url"), load("notification")),
        )
        return record, int(fields.get("events", 0))

    def status(self, fit_id: str) -> FitStatus | None:
        """Just the status (cheap), or None for an unknown fit."""
        value = self.redis.hget(self._key(fit_id), "status")
        return FitStatus(value.decode()) if isinstance(value, bytes) else None

    def active_count(self, owner: str) -> int:
        """How many of ``owner``'s fits are queued or running."""
        return int(self.redis.scard(self._active_of(owner)))

    def in_progress(self) -> int:
        """How many fits are queued or running, of every owner."""
        return int(self.redis.scard(self._active))

    def owner(self, fit_id: str) -> str | None:
        """Who created the fit (an API key's digest; empty without keys), None if unknown."""
        value = self.redis.hget(self._key(fit_id), "owner")
        return value.decode() if isinstance(value, bytes) else None

    def list_ids(self, offset: int, limit: int, owner: str | None = None) -> list[str]:
        """Fit ids, newest first; only ``owner``'s when given."""
        key = self._all if owner is None else self._owned(owner)
        ids = self.redis.zrevrange(key, offset, offset + limit - 1)
        return [i.decode() for i in ids]  # type: ignore[union-attr]

    # ---------------------------------------------------------------------------- quotas

    def _rate(self, owner: str, what: str, window_s: int) -> tuple[str, int]:
        now = int(time.time())
        return f"{self.prefix}:rate:{owner}:{what}:{now // window_s}", window_s - now % window_s

    def rate_used(self, owner: str, what: str, window_s: int = 60) -> tuple[int, int]:
        """How many ``what`` calls ``owner`` made in the current window, and its seconds left."""
        key, left = self._rate(owner, what, window_s)
        value = self.redis.get(key)
        return int(value) if value else 0, left

    def count_rate(self, owner: str, what: str, window_s: int = 60) -> tuple[int, int]:
        """Count one ``what`` call in ``owner``'s current window: (count so far, seconds left)."""
        key, left = self._rate(owner, what, window_s)
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, window_s)
        count, _ = pipe.execute()
        return int(count), left

    # --------------------------------------------------------------------- reconciler

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

    def take_reconciler_turn(self, ttl_s: int) -> bool:
        """Whether this process's reconciler acts now (one per interval among the API
        processes)."""
        return bool(self.redis.set(f"{self.prefix}:reconciler", "1", nx=True, ex=ttl_s))

    def requeue(self, fit_id: str, grace_s: float, now: float | None = None) -> bool:
        """Put a running fit whose lock has been missing for ``grace_s`` back to queued;
        False if it was not (its run is alive, took its lock back, or finished). A new
        message must follow a True."""
        now = time.time() if now is None else now
        return bool(
            self._requeue(
                keys=[self._key(fit_id), self._lock(fit_id), self._suspect(fit_id)],
                args=[now, grace_s, int(grace_s * 10) + 60, self.events_channel(fit_id)],
            )
        )

    def created_before(self, timestamp: float) -> list[str]:
        """Ids of fits created before ``timestamp`` (seconds since the epoch)."""
        ids = self.redis.zrangebyscore(self._all, 0, timestamp)
        return [i.decode() for i in ids]  # type: ignore[union-attr]

    def known(self, fit_ids: list[str]) -> set[str]:
        """Which of ``fit_ids`` have a record (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for fit_id in fit_ids:
            pipe.exists(self._key(fit_id))
        return {i for i, exists in zip(fit_ids, pipe.execute(), strict=True) if exists}

    def forget_active(self, fit_id: str) -> None:
        """Drop a fit from the active sets (it is final or gone)."""
        owner = self.owner(fit_id) or ""
        self.redis.srem(self._active, fit_id)
        self.redis.srem(self._active_of(owner), fit_id)

    def delete(self, fit_id: str) -> list[str]:
        """Forget a fit entirely; its id is never used again. Refused, in the same atomic
        step, while named models use it: then the names of those models (else [])."""
        answer = self._delete(
            keys=[self._key(fit_id)],
            args=[fit_id, f"{self.prefix}:", self.retention_s or 7 * 24 * 3600],
        )
        return sorted(name.decode() for name in answer) if isinstance(answer, list) else []

    def models_using(self, fit_id: str) -> list[str]:
        """The names of the named models whose versions serve the fit."""
        names = self.redis.smembers(self.used_by_key(fit_id))
        return sorted(name.decode() for name in names)  # type: ignore[union-attr]

    # ------------------------------------------------------------------------ runs

    def acquire_lock(self, fit_id: str, token: str, ttl_s: int) -> bool:
        """Take the run lock; False if another live run holds it."""
        return bool(self.redis.set(self._lock(fit_id), token, nx=True, ex=ttl_s))

    def refresh_lock(self, fit_id: str, token: str, ttl_s: int) -> Refresh:
        """Extend the run lock (the heartbeat), or take it back if it lapsed unclaimed."""
        answer = int(
            self._refresh(
                keys=[self._lock(fit_id), self._key(fit_id), self._suspect(fit_id)],
                args=[token, ttl_s, self.events_channel(fit_id)],
            )
        )
        return {1: Refresh.EXTENDED, 2: Refresh.RETAKEN}.get(answer, Refresh.LOST)

    def release_lock(self, fit_id: str, token: str) -> None:
        """Give the run lock back if this run holds it."""
        self._release(keys=[self._lock(fit_id)], args=[token])

    def lock_held(self, fit_id: str) -> bool:
        """Whether a live run holds the fit (its heartbeat is fresh)."""
        return bool(self.redis.exists(self._lock(fit_id)))

    def start_attempt(self, fit_id: str) -> int | None:
        """Mark the fit running and return the attempt number; None if it was cancelled."""
        attempts = int(
            self._start(
                keys=[self._key(fit_id)], args=[utcnow().isoformat(), self.events_channel(fit_id)]
            )
        )
        return None if attempts < 0 else attempts

    def set_progress(self, fit_id: str, progress: Progress) -> None:
        """Replace the progress of a running fit (and notice it on the fit's channel)."""
        self._progress(
            keys=[self._key(fit_id)],
            args=[progress.model_dump_json(), self.events_channel(fit_id)],
        )

    def request_cancel(self, fit_id: str) -> FitStatus | None:
        """Cancel a queued fit now, or flag a running one; the status after the call."""
        status = self._cancel(
            keys=[self._key(fit_id)],
            args=[utcnow().isoformat(), fit_id, f"{self.prefix}:", self._retention],
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
        token: str = "",
        timings: Timings | None = None,
        versions: dict[str, str] | None = None,
        error: FitError | None = None,
    ) -> FitStatus | None:
        """Make the fit final, atomically against a cancel: the status it ends with
        (``cancelled`` if a cancel was asked first), or None if another run holds it."""
        fields: list[str] = []
        if timings is not None:
            fields += ["timings", timings.model_dump_json()]
        if versions is not None:
            fields += ["versions", json.dumps(versions)]
        if error is not None:
            fields += ["error", error.model_dump_json()]
        # A failure of the infrastructure is not the request's answer: its keys are released.
        infrastructure = error is not None and error.reason.infrastructure
        answer = self._finish(
            keys=[self._key(fit_id), self._lock(fit_id)],
            args=[
                status.value,
                token,
                utcnow().isoformat(),
                self._retention,
                f"{self.prefix}:",
                "1" if infrastructure else "0",
                fit_id,
                *fields,
            ],
        )
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        return None if text in ("lost", "gone") else FitStatus(text)

    # -------------------------------------------------------------------- notifications

    @property
    def _outbox(self) -> str:
        return f"{self.prefix}:notify"

    def claim_notification(self, fit_id: str, status: FitStatus) -> bool:
        """Whether this caller sends the first attempt of the notification of the fit's
        final ``status``: True once, and only if the fit ended so and has a pending
        notification."""
        key = f"{self.prefix}:notify:sent:{fit_id}:{status.value}"
        ttl = self.retention_s or 7 * 24 * 3600
        return bool(
            self._claim_notification(
                keys=[self._outbox, key, self._key(fit_id)], args=[fit_id, ttl, status.value]
            )
        )

    def notifications_due(self, before: float, limit: int = 100) -> list[str]:
        """Fits whose notification's next attempt was due before ``before`` (seconds)."""
        ids = self.redis.zrangebyscore(self._outbox, "-inf", before, start=0, num=limit)
        return [i.decode() for i in ids]  # type: ignore[union-attr]

    def schedule_notification(self, fit_id: str, due: float) -> None:
        """Move a pending notification's next attempt to ``due`` (seconds since the epoch)."""
        self.redis.zadd(self._outbox, {fit_id: due}, xx=True)

    def record_notification(
        self, fit_id: str, notification: Notification, due: float | None
    ) -> bool:
        """Store a notification's state and when its next attempt is due (None: it is
        over); False if the fit is gone."""
        return bool(
            self._record_notification(
                keys=[self._key(fit_id), self._outbox],
                args=[notification.model_dump_json(), "" if due is None else due, fit_id],
            )
        )

    def drop_notification(self, fit_id: str) -> None:
        """Forget a notification that has nothing left to send."""
        self.redis.zrem(self._outbox, fit_id)

    def lock_notification(self, fit_id: str, token: str, ttl_s: int) -> bool:
        """Take the lock of an attempt at the fit's notification; False if one is running."""
        key = f"{self.prefix}:notify:lock:{fit_id}"
        return bool(self.redis.set(key, token, nx=True, ex=ttl_s))

    def unlock_notification(self, fit_id: str, token: str) -> None:
        """Give that lock back if this attempt holds it."""
        self._release(keys=[f"{self.prefix}:notify:lock:{fit_id}"], args=[token])

    # ------------------------------------------------------------------ worker presence

    def announce_worker(self, queue: str, worker: str, ttl_s: float) -> None:
        """Say that ``worker`` consumes ``queue`` for the next ``ttl_s`` seconds."""
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.zadd(self._workers(queue), {worker: now + ttl_s})
        pipe.zremrangebyscore(self._workers(queue), 0, now - 3600)
        pipe.execute()

    def retire_worker(self, queue: str, worker: str) -> None:
        """``worker`` stops consuming ``queue``."""
        self.redis.zrem(self._workers(queue), worker)

    def live_workers(self, queue: str) -> set[str]:
        """Worker processes whose presence on ``queue`` has not expired."""
        members = self.redis.zrangebyscore(self._workers(queue), time.time(), "+inf")
        return {m.decode() for m in members}  # type: ignore[union-attr]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _notification(url: str | None, state: dict[str, Any] | None) -> Notification | None:
    """A fit's notification: its stored state, or pending when no attempt was made yet."""
    if state is not None:
        return Notification(**state)
    return Notification(url=url) if url is not None else None
