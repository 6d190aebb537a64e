"""Domain errors. The API maps each to one problem+json answer (see ``service.api.problems``).

The whole tree::

    ServiceError                   base: an HTTP status, a short title, a detail for humans
    ├── InvalidRequest       422   the request says something the service refuses; carries
    │                              ``errors``: one ``{"field": ..., "message": ...}`` per problem
    ├── Unauthorized         401   no API key, or one the service does not know
    ├── NotFound             404   no such fit (or factor, or level), or another key's fit
    ├── RequestTimeout       408   the request's headers or body arrived too slowly
    ├── NotReady             409   results asked for before the fit has succeeded
    ├── PayloadTooLarge      413   the request body is over the limit (checked before parsing)
    ├── DamagedResults       500   a stored file of the fit cannot be read: permanent, logged
    └── RetryLater                 the client may retry after ``retry_after`` seconds
        ├── TooManyRequests  429   over one of the key's quotas
        ├── Unavailable      503   Redis, the storage or the workers did not answer in time
        └── InsufficientStorage 507  the data folder is full

    StorageError                   a fit's files could not be written or removed (raised by
                                   ``Artifacts``; the API answers 507 or 503, a fit fails with
                                   reason ``storage_error``)
    FitFailed                      raised inside the worker; stored on the job record as data
                                   (``reason`` + ``message``), never sent as an exception's text

Messages are always the service's own words. Exception text from libraries never reaches a
client: it would leak internals and, for formulas, values from the evaluation environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a request."""

    field: str
    message: str


class ServiceError(Exception):
    """Base of every error that becomes an HTTP answer."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(ServiceError):
    """The request is well formed but refused; ``errors`` names each field and its problem."""

    status = 422
    title = "Invalid request"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, field: str, message: str) -> InvalidRequest:
        """An InvalidRequest with a single field error."""
        return cls([FieldError(field, message)])


class Unauthorized(ServiceError):
    """The request carries no valid API key."""

    status = 401
    title = "Unauthorized"


class NotFound(ServiceError):
    """No such resource."""

    status = 404
    title = "Not found"


class NotReady(ServiceError):
    """The fit exists but has not succeeded, so it has no results yet."""

    status = 409
    title = "Fit not ready"


class RequestTimeout(ServiceError):
    """The client sent its request too slowly."""

    status = 408
    title = "Request timeout"


class DamagedResults(ServiceError):
    """A stored file of a fit is damaged (truncated, not what was written): a permanent
    error for that fit, unlike an outage."""

    status = 500
    title = "Stored results damaged"


class PayloadTooLarge(ServiceError):
    """The request body is larger than the service accepts."""

    status = 413
    title = "Payload too large"


class RetryLater(ServiceError):
    """An error the client may retry after ``retry_after`` seconds (sent as Retry-After)."""

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class TooManyRequests(RetryLater):
    """Over a quota."""

    status = 429
    title = "Too many requests"


class Unavailable(RetryLater):
    """A backing service did not answer."""

    status = 503
    title = "Service unavailable"


class InsufficientStorage(RetryLater):
    """The data folder is full."""

    status = 507
    title = "Insufficient storage"


class StorageError(Exception):
    """A fit's files could not be written or removed; ``full`` when the disk is full."""

    def __init__(self, detail: str, *, full: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.full = full


@dataclass
class FitFailed(Exception):
    """A fit could not be completed; ``reason`` is a stable code, ``message`` plain language."""

    reason: str
    message: str
    details: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
