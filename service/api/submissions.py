"""Submitting a fit: quotas, validation, the fit's id, its stored request, its message.

- Quotas count what costs: a key's submissions a minute count fits created (a refused
  request, or a repeat that answers with an existing fit, costs nothing; the count and the
  check are one atomic step with the record's creation, so concurrent submissions cannot
  overshoot), and calls that
  need a worker (predictions, results at another interval, dry runs) have their own quota.
- The fit's id: a request with an ``Idempotency-Key`` header, or with a fixed
  ``sampler.seed`` (content addressing), is bound to the first fit made for it. The key is
  bound to that request's content: the same key with another request is a 422. A fit that is
  deleted, cancelled or failed by an infrastructure fault releases its keys, and a deleted
  fit's id is never used again, so the same request then makes a new fit.
- The request is written under a temporary name, the record created, and only then the
  request published and the message sent: two racing identical requests make one fit and
  one stored request, and a full disk leaves no record behind (507).
"""

from __future__ import annotations

import hashlib
import logging

from service.api.deps import Caller
from service.api.validation import validate_fit_request
from service.core.errors import InvalidRequest, TooManyRequests, Unavailable
from service.core.jobs import Claim, FitQuota, new_fit_id
from service.core.schemas import FitRequest, FitResource, FitSpec

log = logging.getLogger(__name__)


def submit_fit(caller: Caller, request: FitRequest, idempotency_key: str | None) -> FitResource:
    """Validate and queue a fit, or answer with the fit already made for this request."""
    check_fit_quotas(caller)
    spec, _ = validate_fit_request(request, caller.services.settings)
    for _ in range(3):  # a claimed id can belong to a fit deleted meanwhile: claim again
        dedup, fit_id = _claim_id(caller, request, spec, idempotency_key)
        record = caller.services.store.get(fit_id)
        if record is not None:
            return record
        record = _create(caller, fit_id, spec, dedup, request.notify_url)
        if record is not None:
            return record
    raise Unavailable("the fit could not be recorded; retry shortly", retry_after=1)


def _create(
    caller: Caller,
    fit_id: str,
    spec: FitSpec,
    dedup: tuple[str, ...],
    notify_url: str | None = None,
) -> FitResource | None:
    """Record, store and queue a new fit; None if its id was deleted meanwhile."""
    services, owner = caller.services, caller.owner
    store = services.store
    with services.artifacts.staged_spec(fit_id, spec) as staged:
        created = store.create(
            fit_id, spec, owner, dedup=dedup, quota=_quota(caller), notify_url=notify_url
        )
        if created is None:
            return None
        if created:
            try:
                staged.publish()
            except Exception:
                store.delete(fit_id)
                raise
    if created:
        try:
            services.dispatcher.enqueue_fit(fit_id)
        except Exception:  # the reconciler sends queued fits without a message again
            log.warning("fit %s: queue message not sent; the reconciler will", fit_id)
    return store.get(fit_id)


def _quota(caller: Caller) -> FitQuota:
    settings = caller.services.settings
    return FitQuota(settings.max_active_fits_per_key, settings.submissions_per_minute)


def check_fit_quotas(caller: Caller) -> None:
    """The key's fits in progress and fits created this minute (429 beyond): an early
    answer before validation; the record's creation checks and counts them atomically."""
    store, settings = caller.services.store, caller.services.settings
    limit = settings.max_active_fits_per_key
    if store.active_count(caller.owner) >= limit:
        raise TooManyRequests(f"{limit} fits are already queued or running", retry_after=30)
    used, reset_s = store.rate_used(caller.owner, "fits")
    if used >= settings.submissions_per_minute:
        raise TooManyRequests(
            f"over {settings.submissions_per_minute} fits a minute", retry_after=reset_s
        )


def count_call(caller: Caller) -> None:
    """Count a call that needs a worker against the key's quota (429 beyond)."""
    limit = caller.services.settings.calls_per_minute
    count, reset_s = caller.services.store.count_rate(caller.owner, "calls")
    if count > limit:
        raise TooManyRequests(
            f"over {limit} predictions, summaries and dry runs a minute", retry_after=reset_s
        )


def _claim_id(
    caller: Caller, request: FitRequest, spec: FitSpec, idempotency_key: str | None
) -> tuple[tuple[str, ...], str]:
    """The dedup keys of this request and the fit id they name (a new one if none)."""
    store, ttl = caller.services.store, caller.services.settings.retention_s
    fit_id = new_fit_id()
    if idempotency_key is not None:
        key = f"{caller.owner}:key:{digest(idempotency_key)}"
        outcome, fit_id = store.claim(key, fit_id, digest(request.model_dump_json()), ttl)
        if outcome is Claim.CONFLICT:
            raise InvalidRequest.one(
                "Idempotency-Key",
                "was used for a different request; send a new key with a new request",
            )
        return (key,), fit_id
    if spec.sampler.seed is not None and request.sampler.seed is not None:
        content = digest(spec.model_dump_json())
        key = f"{caller.owner}:content:{content}"
        _, fit_id = store.claim(key, fit_id, content, ttl)
        return (key,), fit_id
    return (), fit_id


def digest(text: str) -> str:
    """SHA-256 hex digest of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()
