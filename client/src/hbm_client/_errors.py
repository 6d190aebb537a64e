"""The client's exceptions, in one tree, built from the service's problem details (RFC 9457).

::

    HbmError                  base: ``status``, ``title``, ``detail``, ``errors``, ``retry_after``
    ├── Unauthorized    401   no API key, or one the service does not know
    ├── NotFound        404   no such fit (or factor), or another key's fit
    ├── NotReady        409   results asked for before the fit has succeeded (alias ``Conflict``),
    │                         or a named model's change its state refuses
    ├── InvalidRequest  422   refused; ``errors`` names each field and its problem
    ├── RateLimited     429   over a quota (raised once the retries are spent)
    ├── Unavailable     503   the service is not ready (raised once the retries are spent)
    └── FitFailed             ``fit(wait=True)``: the fit ended failed or cancelled; ``fit``,
                              ``reason`` and ``message`` say why (``status`` is None)

Connection failures stay ``httpx.TransportError`` (after the retries of idempotent calls).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict

from hbm_client._retry import retry_after_s

if TYPE_CHECKING:
    from hbm_client._models import FitResource


class FieldError(BaseModel):
    """One refused field of a 422: ``field`` is dotted (``sampler.draws``, ``formula``)."""

    model_config = ConfigDict(extra="allow")

    field: str
    message: str


class HbmError(Exception):
    """An error answer of the service, with its problem details."""

    def __init__(
        self,
        status: int | None,
        title: str,
        detail: str,
        errors: list[FieldError] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status is not None else ""
        return f"{prefix}{self.title}: {self.detail}"


class Unauthorized(HbmError):
    """401: no API key, or one the service does not know."""


class NotFound(HbmError):
    """404: no such fit or factor, or another key's fit."""


class NotReady(HbmError):
    """409: the fit has not succeeded (yet), so it has no results; or (as ``Conflict``) a
    named model refused a change: a failing verdict without force, nothing to roll back
    to, a fit a model uses."""


Conflict = NotReady


class InvalidRequest(HbmError):
    """422: the service refused the request; ``errors`` names each field."""

    @property
    def fields(self) -> list[str]:
        """The refused fields, in the service's order."""
        return [e.field for e in self.errors]


class RateLimited(HbmError):
    """429: over one of the key's quotas; ``retry_after`` says when to come back."""


class Unavailable(HbmError):
    """503: Redis, the workers or the storage did not answer; ``retry_after`` seconds."""


class FitFailed(HbmError):
    """The fit ended ``failed`` (or ``cancelled``): ``reason`` is the service's stable code
    (``model_error``, ``timeout``...), ``message`` its words, ``fit`` the final record."""

    def __init__(self, fit: FitResource) -> None:
        self.fit = fit
        if fit.error is not None:
            self.reason, self.message = fit.error.reason, fit.error.message
        else:
            self.reason, self.message = fit.status, f"the fit was {fit.status}"
        super().__init__(None, "Fit failed", f"fit {fit.id}: {self.reason}: {self.message}")


_BY_STATUS: dict[int, type[HbmError]] = {
    401: Unauthorized,
    404: NotFound,
    409: NotReady,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
}


def error_for(response: httpx.Response) -> HbmError:
    """The exception for an error answer, from its problem+json body when it has one."""
    body: Any
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):  # not the service's answer (a proxy's page, say)
        body = {"detail": response.text[:500]}
    errors = [FieldError.model_validate(e) for e in body.get("errors") or [] if _is_field(e)]
    cls = _BY_STATUS.get(response.status_code, HbmError)
    return cls(
        response.status_code,
        str(body.get("title") or response.reason_phrase),
        str(body.get("detail") or ""),
        errors,
        retry_after_s(response.headers.get("Retry-After")),
    )


def _is_field(item: object) -> bool:
    return isinstance(item, dict) and {"field", "message"} <= item.keys()
