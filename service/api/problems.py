"""The single mapping from errors to ``application/problem+json`` answers (RFC 9457).

Every answer carries ``type``, ``title``, ``status`` and ``detail``; 422 answers also carry
``errors``: one ``{"field", "message"}`` per problem. Inputs are never echoed back and no
traceback or library exception text ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import (
    FieldError,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    RetryLater,
    ServiceError,
    StorageError,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class FieldProblem(BaseModel):
    """One refused field of a 422."""

    field: str
    message: str


class Problem(BaseModel):
    """An error answer (RFC 9457 problem details)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = Field(
        default=None, description="422 only: one entry per refused field."
    )


#: What each error status means, with an example detail, for the OpenAPI document.
EXAMPLES: dict[int, tuple[str, str]] = {
    401: ("Unauthorized", "send an API key in the X-API-Key header"),
    404: ("Not found", "there is no fit '3f2a...'"),
    408: ("Request timeout", "the request body did not arrive within 60 s"),
    409: ("Fit not ready", "the fit is running; results exist once it has succeeded"),
    413: ("Payload too large", "the request body is over 67108864 bytes"),
    422: ("Invalid request", "formula: 'klass' is not a column of the data"),
    429: ("Too many requests", "over 120 fits a minute"),
    500: ("Stored results damaged", "the fit's stored summary is damaged and cannot be read"),
    503: ("Service unavailable", "the job store is not reachable; retry shortly"),
    507: ("Insufficient storage", "the request could not be stored: the disk is full"),
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route gives."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        title, detail = EXAMPLES[status]
        example: dict[str, Any] = {
            "type": "about:blank", "title": title, "status": status, "detail": detail
        }  # fmt: skip
        if status == 422:
            field, message = detail.split(": ", 1)
            example["errors"] = [{"field": field, "message": message}]
        responses[status] = {
            "description": title,
            "content": {
                PROBLEM_JSON: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": example,
                }
            },
        }
    return responses


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def response_for(exc: ServiceError) -> JSONResponse:
    """The problem+json answer for a domain error."""
    headers = None
    if isinstance(exc, RetryLater):
        headers = {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "ApiKey"}
    errors = exc.errors if isinstance(exc, InvalidRequest) else None
    return problem(exc.status, exc.title, exc.detail, errors=errors, headers=headers)


def _field_of(location: tuple[Any, ...]) -> str:
    # A JSON syntax error's location is a byte offset, which names no field.
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    if location[:1] == ("body",) and all(isinstance(p, int) for p in location[1:]):
        return "body"
    # Union branches add the branch type to the location; it means nothing to a client.
    parts = [p for p in parts if not p.startswith(("list[", "dict["))]
    return ".".join(parts) or "body"


def _from_validation_error(exc: RequestValidationError) -> JSONResponse:
    seen: set[tuple[str, str]] = set()
    errors: list[FieldError] = []
    for error in exc.errors():
        item = (_field_of(tuple(error.get("loc", ()))), str(error.get("msg", "is invalid")))
        if item not in seen:
            seen.add(item)
            errors.append(FieldError(*item))
    shown = errors[:20]
    return response_for(InvalidRequest(shown))


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _from_validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return response_for(Unavailable("the job store is not reachable; retry shortly"))

    @app.exception_handler(FileNotFoundError)
    async def files_gone(_: Request, exc: FileNotFoundError) -> JSONResponse:
        # A fit's files vanish when it is deleted or expires while a request reads them.
        return response_for(NotFound("the fit's results are not stored any more"))

    @app.exception_handler(StorageError)
    async def storage_failed(_: Request, exc: StorageError) -> JSONResponse:
        log.warning("storage failed: %s", exc.detail)
        if exc.full:
            return response_for(InsufficientStorage(exc.detail, retry_after=60))
        return response_for(Unavailable(exc.detail, retry_after=10))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        # Starlette closes the connection after an unhandled error: say so.
        return problem(
            500,
            "Internal error",
            "an unexpected error occurred; it has been logged",
            headers={"Connection": "close"},
        )
