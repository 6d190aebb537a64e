"""Domain errors. The API maps each to one problem+json answer (see ``service.api.problems``).

The whole tree::

    ServiceError                 base: an HTTP status, a short title, a detail for humans
    ├── InvalidRequest     422   the request says something the service refuses; carries
    │                            ``errors``: one ``{"field": ..., "message": ...}`` per problem
    ├── Unauthorized       401   no API key, or one the service does not know
    ├── NotFound           404   no such fit (or factor, or level), or another key's fit
    ├── NotReady           409   results asked for before the fit has succeeded
    ├── PayloadTooLarge    413   the request body is over the limit (checked before parsing)
    ├── TooManyRequests    429   over the key's submission quota; retry after ``retry_after``
    └── Unavailable        503   Redis or the workers did not answer in time; retry later

    FitFailed                    raised inside the worker; stored on the job record as data
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


@dataclass
class FitFailed(Exception):
    """A fit could not be completed; ``reason`` is a stable code, ``message`` plain language."""

    reason: str
    message: str
    details: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
