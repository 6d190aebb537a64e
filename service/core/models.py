"""Named models: a stable name, per API key, that serves one of its fits as the current
version (``PUT /v1/models/{name}``), with every version and every change kept.

Keys, beside the job store's and under the same prefix (``JobStore`` lists them all)::

    model:{owner}:{name}          hash: current (version), fit_id (its fit), versions (how
                                  many), created_at, updated_at, and v:{n}: version n as JSON
    model:{owner}:{name}:history  list: each promotion and rollback as JSON, in order
    models:{owner}                sorted set of the key's model names (score 0: by name)
    usedby:{fit id}               set of the model names whose versions (current or past)
                                  serve the fit

Every change is one Lua script, so it is atomic against the others and against a fit's
deletion: a promotion checks that the fit is still there, succeeded and the caller's, adds
the model to ``usedby:{fit}`` and removes the fit record's expiry (``PERSIST``) in the same
step; ``JobStore.delete`` refuses, in its own step, a fit whose ``usedby`` set is not empty.
So a fit that any version uses can neither be deleted nor expire with the retention. When a
model is deleted, each of its fits that no other model uses expires a full retention later.

A version is never rewritten: a rollback moves the current pointer and is recorded as a new
event. The current (version, fit id) pair lives in one hash and is read with one ``HMGET``,
so a request resolves it once, atomically, and uses that fit for its whole call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.core.errors import FieldError, InvalidRequest, NotFound, NotReady, ServiceError
from service.core.jobs import JobStore, utcnow
from service.core.schemas import (
    NamedModel,
    NamedModelEvent,
    NamedModelSummary,
    NamedModelVersion,
)

#: What a model name may be: it is a URL path segment and part of Redis keys.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}")
#: Names taken by other routes under ``/v1/models/`` (``POST /v1/models/validate``).
RESERVED_NAMES = frozenset({"validate"})
#: Promotions and rollbacks one model keeps (each listed by ``GET /v1/models/{name}``).
MAX_EVENTS = 1000
#: Named models one key may hold.
MAX_MODELS_PER_KEY = 1000
#: The characters of a key's digest that name who promoted a version.
BY_CHARS = 12


class ModelConflict(ServiceError):
    """409: the change contradicts the model's state (nothing to roll back to, a fit that
    failed its diagnostics, a fit that a model still uses...)."""

    status = 409
    title = "Conflict"


# Promote a succeeded fit of the owner as the model's next version. Answers
# {'promoted', version}, {'same', version} (already current: nothing changes), {'gone'}
# (no such fit of this owner), {'status', status}, {'models'} or {'events'} (a limit).
_PROMOTE = """
local fit = redis.call('HMGET', KEYS[5], 'status', 'owner')
if not fit[1] or fit[2] ~= ARGV[3] then return {'gone'} end
if fit[1] ~= 'succeeded' then return {'status', fit[1]} end
local model = redis.call('HMGET', KEYS[1], 'current', 'fit_id')
if model[2] == ARGV[2] then return {'same', tonumber(model[1])} end
if not model[1] and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return {'models'} end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[8]) then return {'events'} end
local version = redis.call('HINCRBY', KEYS[1], 'versions', 1)
local entry = cjson.decode(ARGV[5])
entry['version'] = version
local event = cjson.decode(ARGV[6])
event['version'] = version
event['from_version'] = model[1] and tonumber(model[1]) or cjson.null
redis.call('HSET', KEYS[1], 'current', version, 'fit_id', ARGV[2], 'updated_at', ARGV[4],
           'v:' .. version, cjson.encode(entry))
if not model[1] then redis.call('HSET', KEYS[1], 'created_at', ARGV[4]) end
redis.call('RPUSH', KEYS[2], cjson.encode(event))
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('PERSIST', KEYS[5])
return {'promoted', version}
"""

# Make version ARGV[1] current again (0: current - 1), as a new event. Answers
# {'rolled_back', version}, {'same', version}, {'gone'}, {'nothing'} (no earlier version),
# {'unknown', versions} (no such version) or {'events'} (the history is full).
_ROLLBACK = """
local model = redis.call('HMGET', KEYS[1], 'current', 'versions')
if not model[1] then return {'gone'} end
local current, versions = tonumber(model[1]), tonumber(model[2])
local target = tonumber(ARGV[1])
if target == 0 then target = current - 1 end
if target < 1 then return {'nothing'} end
if target > versions then return {'unknown', versions} end
if target == current then return {'same', current} end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[4]) then return {'events'} end
local entry = cjson.decode(redis.call('HGET', KEYS[1], 'v:' .. target))
local event = cjson.decode(ARGV[2])
event['version'] = target
event['from_version'] = current
event['fit_id'] = entry['fit_id']
redis.call('HSET', KEYS[1], 'current', target, 'fit_id', entry['fit_id'], 'updated_at', ARGV[3])
redis.call('RPUSH', KEYS[2], cjson.encode(event))
return {'rolled_back', target}
"""

# Delete a model: release each of its fits (a fit no model uses any more expires a
# retention later, as a finished fit does), then its keys. 1: deleted, 0: no such model.
_DELETE_MODEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local versions = tonumber(redis.call('HGET', KEYS[1], 'versions') or '0')
local fits = {}
for v = 1, versions do
  local raw = redis.call('HGET', KEYS[1], 'v:' .. v)
  if raw then fits[cjson.decode(raw)['fit_id']] = true end
end
for fit_id, _ in pairs(fits) do
  local used = ARGV[2] .. 'usedby:' .. fit_id
  redis.call('SREM', used, ARGV[1])
  if redis.call('SCARD', used) == 0 then
    local record = ARGV[2] .. 'fit:' .. fit_id
    if ARGV[3] ~= '0' and redis.call('EXISTS', record) == 1 then
      redis.call('EXPIRE', record, ARGV[3])
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""


def check_name(name: str) -> str:
    """``name`` if it may name a model; else a 422 naming ``name``."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            [
                FieldError(
                    "name",
                    "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                    "letter or digit",
                )
            ]
        )
    if name in RESERVED_NAMES:
        raise InvalidRequest.one("name", f"'{name}' is reserved (POST /v1/models/{name})")
    return name


def promoter(owner: str) -> str:
    """How a version names the key that made it: its digest's prefix, or anonymous."""
    return owner[:BY_CHARS] if owner else "anonymous"


@dataclass(frozen=True)
class Current:
    """A model's current version and the fit it serves, read in one atomic step."""

    name: str
    version: int
    fit_id: str


@dataclass(frozen=True)
class Promotion:
    """What a promotion records of its fit besides the fit id."""

    fit_id: str
    formula: str
    family: str
    verdict: str | None
    forced: bool = False
    note: str | None = None


class ModelRegistry:
    """Named models in the job store's Redis, under its prefix."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.redis = store.redis
        self.prefix = store.prefix
        self._promote = self.redis.register_script(_PROMOTE)
        self._rollback = self.redis.register_script(_ROLLBACK)
        self._delete = self.redis.register_script(_DELETE_MODEL)

    # ------------------------------------------------------------------------ key names

    def _model(self, owner: str, name: str) -> str:
        return f"{self.prefix}:model:{owner}:{name}"

    def _history(self, owner: str, name: str) -> str:
        return f"{self._model(owner, name)}:history"

    def _names(self, owner: str) -> str:
        return f"{self.prefix}:models:{owner}"

    # ---------------------------------------------------------------------------- changes

    def promote(self, owner: str, name: str, promotion: Promotion) -> tuple[int, bool]:
        """Make the fit the model's next version (created with version 1): the version
        current afterwards, and whether this call changed anything (the fit was current
        already: it did not). NotFound if the fit is gone or not the owner's, NotReady if it
        has not succeeded, ModelConflict past a limit."""
        now = utcnow().isoformat()
        by = promoter(owner)
        entry = {
            "fit_id": promotion.fit_id,
            "formula": promotion.formula,
            "family": promotion.family,
            "verdict": promotion.verdict,
            "forced": promotion.forced,
            "note": promotion.note,
            "promoted_by": by,
            "promoted_at": now,
        }
        event = {
            "action": "promote",
            "fit_id": promotion.fit_id,
            "forced": promotion.forced,
            "note": promotion.note,
            "by": by,
            "at": now,
        }
        outcome, *rest = self._promote(
            keys=[
                self._model(owner, name),
                self._history(owner, name),
                self._names(owner),
                self.store.used_by_key(promotion.fit_id),
                self.store.record_key(promotion.fit_id),
            ],
            args=[
                name,
                promotion.fit_id,
                owner,
                now,
                json.dumps(entry),
                json.dumps(event),
                MAX_MODELS_PER_KEY,
                MAX_EVENTS,
            ],
        )
        outcome = outcome.decode()
        if outcome in ("promoted", "same"):
            return int(rest[0]), outcome == "promoted"
        if outcome == "gone":
            raise NotFound(f"there is no fit '{promotion.fit_id}'")
        if outcome == "status":
            raise NotReady(f"the fit is {rest[0].decode()}; only a succeeded fit is promoted")
        if outcome == "models":
            raise ModelConflict(f"a key holds at most {MAX_MODELS_PER_KEY} named models")
        raise ModelConflict(self._full(name))

    def rollback(self, owner: str, name: str, to_version: int | None = None) -> tuple[int, bool]:
        """Make ``to_version`` (default: the current one minus one) current again, as a new
        event: the version current afterwards, and whether this call changed anything.
        NotFound without the model, ModelConflict when there is nothing to roll back to,
        InvalidRequest naming ``to_version`` for a version the model never had."""
        now = utcnow().isoformat()
        event = {"action": "rollback", "by": promoter(owner), "at": now}
        outcome, *rest = self._rollback(
            keys=[self._model(owner, name), self._history(owner, name)],
            args=[to_version or 0, json.dumps(event), now, MAX_EVENTS],
        )
        outcome = outcome.decode()
        if outcome in ("rolled_back", "same"):
            return int(rest[0]), outcome == "rolled_back"
        if outcome == "gone":
            raise self._missing(name)
        if outcome == "nothing":
            raise ModelConflict(
                f"model '{name}' is at version 1: there is no earlier version to roll back to"
            )
        if outcome == "unknown":
            raise InvalidRequest.one(
                "to_version", f"model '{name}' has versions 1 to {int(rest[0])} only"
            )
        raise ModelConflict(self._full(name))

    def delete(self, owner: str, name: str) -> None:
        """Forget the model (not its fits, which expire with the retention once no model
        uses them); NotFound if there is none."""
        deleted = self._delete(
            keys=[self._model(owner, name), self._history(owner, name), self._names(owner)],
            args=[name, f"{self.prefix}:", self.store.retention_s or 0],
        )
        if not deleted:
            raise self._missing(name)

    # ------------------------------------------------------------------------------ reads

    def current(self, owner: str, name: str) -> Current:
        """The model's current version and its fit, read in one step (NotFound if none)."""
        version, fit_id = self.redis.hmget(self._model(owner, name), ["current", "fit_id"])
        if not isinstance(version, bytes) or not isinstance(fit_id, bytes):
            raise self._missing(name)
        return Current(name, int(version), fit_id.decode())

    def get(self, owner: str, name: str) -> NamedModel:
        """The model with every version and its history (NotFound if none)."""
        pipe = self.redis.pipeline(transaction=True)  # one consistent view of both keys
        pipe.hgetall(self._model(owner, name))
        pipe.lrange(self._history(owner, name), 0, -1)
        raw, events = pipe.execute()
        if not raw:
            raise self._missing(name)
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        versions = [
            NamedModelVersion.model_validate_json(fields[f"v:{n}"])
            for n in range(1, int(fields["versions"]) + 1)
        ]
        summary = _summary(name, fields)
        return NamedModel(
            **summary.model_dump(),
            versions=versions,
            history=[NamedModelEvent.model_validate_json(e) for e in events],
            links=links(name, summary.fit_id),
        )

    def list_models(self, owner: str, offset: int, limit: int) -> list[NamedModelSummary]:
        """The owner's models by name, ``limit`` from ``offset``."""
        raw_names = self.redis.zrange(self._names(owner), offset, offset + limit - 1)
        names = [n.decode() for n in raw_names]  # type: ignore[union-attr]
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._model(owner, name))
        models = []
        for name, raw in zip(names, pipe.execute(), strict=True):
            if raw:  # deleted since the names were read
                models.append(_summary(name, {k.decode(): v.decode() for k, v in raw.items()}))
        return models

    def using(self, fit_id: str) -> list[str]:
        """The names of the models whose versions serve the fit."""
        return self.store.models_using(fit_id)

    def _missing(self, name: str) -> NotFound:
        return NotFound(f"there is no model '{name}'")

    def _full(self, name: str) -> str:
        return (
            f"model '{name}' has {MAX_EVENTS} promotions and rollbacks, the most one keeps; "
            "delete it and promote its fit under a name again"
        )


def links(name: str, fit_id: str) -> dict[str, str]:
    """The URLs of a model's resources and of its current fit."""
    base = f"/v1/models/{name}"
    return {
        "self": base,
        "predictions": f"{base}/predictions",
        "rollback": f"{base}/rollback",
        "fit": f"/v1/fits/{fit_id}",
    }


def _summary(name: str, fields: dict[str, str]) -> NamedModelSummary:
    current: dict[str, Any] = json.loads(fields[f"v:{fields['current']}"])
    return NamedModelSummary(
        name=name,
        version=int(fields["current"]),
        fit_id=fields["fit_id"],
        formula=current["formula"],
        family=current["family"],
        created_at=datetime.fromisoformat(fields["created_at"]),
        updated_at=datetime.fromisoformat(fields["updated_at"]),
    )
