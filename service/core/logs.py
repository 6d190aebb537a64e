"""One logging setup for the API and the workers, and what a log line is about.

``HBM_LOG_FORMAT=text`` (the default) keeps each server's own lines (uvicorn's in the API,
Celery's in the workers). ``json`` makes every line of every process one JSON object::

    {"time": "2026-01-02T03:04:05.678+00:00", "level": "INFO", "logger": "worker.fitting",
     "message": "...", "request_id": "abc-123", "fit_id": "3f2a...", "process": 4242}

plus ``exception`` (the traceback as text) when the line carries one. ``request_id`` is the
``X-Request-ID`` of the API request the line is about (the API's middleware takes it from
the request or makes one); ``fit_id`` the fit a worker is working on. Both are null when the
line is about neither.

Where they come from: in the API a context variable per request (requests share a process
and its threads). In a worker the pool process works on one task at a time, so what it works
on is the process's state (``working_on``), seen by every thread of the process (the fit's
heartbeat and watchdog threads too). A fit's request id is stored with the fit when it is
submitted; calls carry it in their task headers (``TASK_HEADER``).
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

#: The Celery message header that carries the request id from the API to a worker.
TASK_HEADER = "hbm_request_id"
#: An ``X-Request-ID`` a client may choose: 1 to 128 letters, digits and ``._:-``.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_request_id: ContextVar[str | None] = ContextVar("hbm_request_id", default=None)
_fit_id: ContextVar[str | None] = ContextVar("hbm_fit_id", default=None)
#: What this process works on (a worker's pool process: one task at a time).
_process: dict[str, str | None] = {"request_id": None, "fit_id": None}


def safe_request_id(value: object) -> str | None:
    """``value`` when it is a safe request id, else None."""
    return value if isinstance(value, str) and SAFE_REQUEST_ID.fullmatch(value) else None


def request_id_or_new(value: str | None) -> str:
    """``value`` when it is a safe request id, else a fresh one (32 hex digits)."""
    return safe_request_id(value) or uuid.uuid4().hex


def set_request_id(value: str | None) -> Token[str | None]:
    """The request id of the lines logged in this context (an API request)."""
    return _request_id.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    """Back to the request id before ``set_request_id``."""
    _request_id.reset(token)


def current_request_id() -> str | None:
    """The request id lines logged here carry, if any."""
    return _request_id.get() or _process["request_id"]


def current_fit_id() -> str | None:
    """The fit id lines logged here carry, if any."""
    return _fit_id.get() or _process["fit_id"]


def bind_process(*, fit_id: str | None, request_id: str | None) -> None:
    """From now on every line of this process names this fit and request (None: none)."""
    _process.update(fit_id=fit_id, request_id=request_id)


@contextmanager
def working_on(fit_id: str | None, request_id: str | None = None) -> Iterator[None]:
    """Within the block every line of this process names ``fit_id`` (and ``request_id``,
    or the one bound before when None); the previous binding comes back after it."""
    previous = dict(_process)
    bind_process(fit_id=fit_id, request_id=request_id or previous["request_id"])
    try:
        yield
    finally:
        _process.update(previous)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, fit_id, process,
    and exception when there is one. A record's own ``request_id``/``fit_id`` attributes
    (``extra=``) take precedence over the context's."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
            "fit_id": getattr(record, "fit_id", None) or current_fit_id(),
            "process": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def json_config(level: str | int = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` that writes every logger's lines as JSON to stderr
    (uvicorn's and Celery's loggers included: they propagate to the root)."""
    level = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    servers = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {name: {"handlers": [], "propagate": True} for name in servers},
    }


def configure(log_format: LogFormat, level: str | int = "info") -> bool:
    """Set up this process's logging for ``log_format``: JSON lines everywhere (warnings
    too), or nothing for text (the servers keep their own). Whether it configured."""
    if log_format != "json":
        return False
    logging.config.dictConfig(json_config(level))
    logging.captureWarnings(True)
    return True
