"""Thin Celery tasks: a fit runs through ``worker.fitting``; synchronous calls (predictions,
results at another interval, the dry run) answer through ``_reply``."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from service.core import tasks
from service.core.errors import DamagedResults, FitFailed, InvalidRequest, NotFound, StorageError
from service.core.jobs import is_fit_id
from service.core.schemas import FitSpec
from worker.celery_app import app
from worker.context import context
from worker.fitting import run_fit
from worker.modeling.building import build_model, frame
from worker.modeling.cache import FittedModel
from worker.modeling.describe import describe
from worker.modeling.prediction import predict
from worker.modeling.summaries import group_effects, summarize
from worker.resilience import best_effort

log = logging.getLogger(__name__)


@app.task(name=tasks.FIT)
def fit(fit_id: str) -> None:
    """Fit one queued model. Safe to run again: a finished fit is left alone."""
    run_fit(fit_id, context())


# ------------------------------------------------------------------- synchronous calls


def worker_name() -> str:
    """This pool process's worker, as it announces itself (host and main process id)."""
    return f"{socket.gethostname()}:{os.getppid()}"


def _reply(reply_key: str, compute: Callable[[], Any]) -> None:
    """Say which worker took the call, run ``compute`` and push its answer, or the error
    as data, to ``reply_key``."""
    store = context().store
    token = reply_key.rsplit(":", 1)[1]
    best_effort(
        lambda: store.redis.set(store.call_key(token), worker_name(), ex=tasks.REPLY_TTL_S),
        what="claim a call",
    )
    try:
        message: dict[str, Any] = {"ok": compute()}
    except FitFailed as exc:
        error = InvalidRequest.one("formula", exc.message)
        errors = [{"field": e.field, "message": e.message} for e in error.errors]
        message = {"error": {"status": 422, "detail": error.detail, "errors": errors}}
    except InvalidRequest as exc:
        errors = [{"field": e.field, "message": e.message} for e in exc.errors]
        message = {"error": {"status": 422, "detail": exc.detail, "errors": errors}}
    except NotFound as exc:
        message = {"error": {"status": 404, "detail": exc.detail}}
    except DamagedResults as exc:
        message = {"error": {"status": 500, "detail": exc.detail}}
    except StorageError as exc:
        message = {"error": {"status": 503, "detail": exc.detail}}
    except Exception:
        log.exception("call on %s failed", reply_key)
        message = {"error": {"status": 503, "detail": "the worker failed to answer"}}
    pipe = store.redis.pipeline()
    pipe.rpush(reply_key, json.dumps(message))
    pipe.expire(reply_key, tasks.REPLY_TTL_S)
    pipe.execute()


def _fitted(payload: dict[str, Any]) -> FittedModel:
    fit_id = payload["fit_id"]
    if not is_fit_id(fit_id):
        raise NotFound("no such fit")
    try:
        return context().cache.get(fit_id, payload.get("revision", ""))
    except FileNotFoundError as exc:
        raise NotFound("the fit's results are not stored any more") from exc


@app.task(name=tasks.PREDICT)
def predict_task(payload: dict[str, Any], reply_key: str) -> None:
    """Predict new rows from a fitted model and reply."""

    def compute() -> Any:
        fitted = _fitted(payload)
        body = predict(
            fitted.model,
            fitted.posterior,
            frame(payload["columns"], fitted.spec),
            labels=frame(payload["columns"]),
            kind=payload["kind"],
            interval_kind=payload["interval"],
            prob=payload["prob"],
            seed=payload["seed"],
        )
        return {"fit_id": payload["fit_id"], **body}

    _reply(reply_key, compute)


@app.task(name=tasks.RESULTS)
def results_task(payload: dict[str, Any], reply_key: str) -> None:
    """Summary or group effects at a requested interval, and reply."""

    def compute() -> Any:
        fitted = _fitted(payload)
        shape = summarize if payload["what"] == "summary" else group_effects
        return shape(
            fitted.model, fitted.posterior, payload["fit_id"], payload["interval"], payload["prob"]
        )

    _reply(reply_key, compute)


@app.task(name=tasks.DESCRIBE)
def describe_task(payload: dict[str, Any], reply_key: str) -> None:
    """Build (but do not sample) a model and describe it: the dry run."""

    def compute() -> Any:
        spec = FitSpec.model_validate(payload["spec"])
        return {**describe(build_model(spec)), "n_dropped": spec.n_dropped}

    _reply(reply_key, compute)
