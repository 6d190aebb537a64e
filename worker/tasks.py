"""Thin Celery tasks: a fit runs through ``worker.fitting``; synchronous calls (see
``service.core.protocol``) are answered with the response models of ``schemas``."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from celery import current_task
from pydantic import BaseModel, ValidationError

from service.core.errors import (
    FitFailed,
    InvalidRequest,
    NotFound,
    ServiceError,
    StorageError,
    Unavailable,
)
from service.core.jobs import is_fit_id
from service.core.metrics import CALLS, RECORDER
from service.core.protocol import (
    FIT_TASK,
    REPLY_TTL_S,
    CompareCall,
    DescribeCall,
    DrawsCall,
    FileWritten,
    FitRef,
    FittedCall,
    GroupsCall,
    LooCall,
    PlotCall,
    PpcCall,
    PredictCall,
    SummaryCall,
    encode_answer,
    encode_error,
)
from service.core.schemas import Comparison, GroupEffects, Loo, Ppc, Predictions, Summary
from service.core.webhooks import NOTIFY_TASK
from worker.celery_app import app
from worker.context import context
from worker.derived import compare, pointwise, stored_loo
from worker.fitting import run_fit
from worker.modeling.building import build_model, frame
from worker.modeling.cache import FittedModel
from worker.modeling.describe import describe
from worker.modeling.ppc import posterior_predictive_check
from worker.modeling.prediction import predict
from worker.modeling.summaries import group_effects, summarize
from worker.notify import run_notification
from worker.outputs.draws import write_draws
from worker.outputs.plots import write_plot
from worker.resilience import best_effort

log = logging.getLogger(__name__)


@app.task(name=FIT_TASK)
def fit(fit_id: str) -> None:
    """Fit one queued model. Safe to run again: a finished fit is left alone."""
    run_fit(fit_id, context())


@app.task(name=NOTIFY_TASK)
def notify(fit_id: str, attempt: int) -> None:
    """One attempt at a finished fit's notification (its ``notify_url``). Safe to run
    again: an attempt is made once (see ``worker.notify``)."""
    if is_fit_id(fit_id) and isinstance(attempt, int):
        run_notification(fit_id, attempt, context())


# ------------------------------------------------------------------- synchronous calls


def worker_name() -> str:
    """This pool process's worker, as it announces itself (host and main process id)."""
    return f"{socket.gethostname()}:{os.getppid()}"


def answer(reply_key: str, compute: Callable[[], BaseModel]) -> None:
    """Say which worker took the call, compute its answer and push it (or the error met)
    to ``reply_key``; then record how long it took (``hbm_worker_call_duration_seconds``)."""
    store = context().store
    token = reply_key.rsplit(":", 1)[1]
    started = time.perf_counter()
    best_effort(
        lambda: store.redis.set(store.call_key(token), worker_name(), ex=REPLY_TTL_S),
        what="claim a call",
    )
    outcome = "error"
    try:
        reply = encode_answer(compute())
        outcome = "ok"
    except FitFailed as exc:
        reply = encode_error(InvalidRequest.one("formula", exc.message))
    except ServiceError as exc:
        reply = encode_error(exc)
    except StorageError as exc:
        reply = encode_error(Unavailable(exc.detail))
    except ValidationError:
        log.exception("call on %s was not understood", reply_key)
        reply = encode_error(Unavailable("the worker did not understand the call"))
    except Exception:
        log.exception("call on %s failed", reply_key)
        reply = encode_error(Unavailable("the worker failed to answer"))
    pipe = store.redis.pipeline()
    pipe.rpush(reply_key, reply)
    pipe.expire(reply_key, REPLY_TTL_S)
    pipe.execute()
    # After the reply: the caller does not wait for the metrics.
    name = getattr(current_task, "name", None) or "hbm.unknown"
    RECORDER.observe(CALLS, time.perf_counter() - started, (name.removeprefix("hbm."), outcome))
    best_effort(lambda: RECORDER.flush(store.redis, store.prefix), what="record metrics")


def _fitted(call: FittedCall | FitRef) -> FittedModel:
    if not is_fit_id(call.fit_id):
        raise NotFound("no such fit")
    try:
        return context().cache.get(call.fit_id, call.revision)
    except FileNotFoundError as exc:
        raise NotFound("the fit's results are not stored any more") from exc


@app.task(name=PredictCall.task)
def predict_task(payload: dict[str, Any], reply_key: str) -> None:
    """Predict new rows from a fitted model and reply."""

    def compute() -> Predictions:
        call = PredictCall.model_validate(payload)
        fitted = _fitted(call)
        rows = pd.RangeIndex(call.n_rows)  # a model may use no column (y ~ 1): count rows
        body = predict(
            fitted.model,
            fitted.posterior,
            frame(call.columns, fitted.spec).reindex(rows),
            labels=frame(call.columns).reindex(rows),
            kind=call.kind,
            interval_kind=call.interval,
            prob=call.prob,
            seed=call.seed,
        )
        return Predictions.model_validate({"fit_id": call.fit_id, **body})

    answer(reply_key, compute)


@app.task(name=SummaryCall.task)
def summary_task(payload: dict[str, Any], reply_key: str) -> None:
    """The summary at a requested interval, and reply."""

    def compute() -> Summary:
        call = SummaryCall.model_validate(payload)
        fitted = _fitted(call)
        return summarize(fitted.model, fitted.posterior, call.fit_id, call.interval, call.prob)

    answer(reply_key, compute)


@app.task(name=GroupsCall.task)
def groups_task(payload: dict[str, Any], reply_key: str) -> None:
    """One factor's group effects at a requested interval, and reply."""

    def compute() -> GroupEffects:
        call = GroupsCall.model_validate(payload)
        fitted = _fitted(call)
        groups = group_effects(
            fitted.model, fitted.posterior, call.fit_id, call.interval, call.prob
        )
        if call.factor in groups:
            return groups[call.factor]
        known = sorted(groups)
        raise NotFound(f"the model has no grouping factor '{call.factor[:60]}'; it has {known}")

    answer(reply_key, compute)


@app.task(name=DescribeCall.task)
def describe_task(payload: dict[str, Any], reply_key: str) -> None:
    """Build (but do not sample) a model and describe it: the dry run."""

    def compute() -> BaseModel:
        call = DescribeCall.model_validate(payload)
        return describe(build_model(call.spec), call.spec.n_dropped)

    answer(reply_key, compute)


@app.task(name=LooCall.task)
def loo_task(payload: dict[str, Any], reply_key: str) -> None:
    """The fit's PSIS-LOO (computed and stored on the first call), and reply."""

    def compute() -> Loo:
        call = LooCall.model_validate(payload)
        return stored_loo(context().artifacts, call.fit_id, _fitted(call))

    answer(reply_key, compute)


@app.task(name=CompareCall.task)
def compare_task(payload: dict[str, Any], reply_key: str) -> None:
    """Compare fits of the same data by PSIS-LOO, and reply."""

    def compute() -> Comparison:
        call = CompareCall.model_validate(payload)
        artifacts = context().artifacts
        fits = {}
        for ref in call.fits:
            fitted = _fitted(ref)
            fits[ref.fit_id] = (fitted, pointwise(artifacts, ref.fit_id, fitted))
        return compare(fits)

    answer(reply_key, compute)


@app.task(name=PpcCall.task)
def ppc_task(payload: dict[str, Any], reply_key: str) -> None:
    """A posterior predictive check of the fit, and reply."""

    def compute() -> Ppc:
        call = PpcCall.model_validate(payload)
        fitted = _fitted(call)
        spec = fitted.spec
        return posterior_predictive_check(
            fitted.model,
            fitted.posterior,
            frame(spec.columns, spec),
            family=spec.family,
            stat=call.stat,
            by=call.by,
            prob=call.prob,
            interval_kind=call.interval,
            seed=call.seed,
            fit_id=call.fit_id,
        )

    answer(reply_key, compute)


@app.task(name=DrawsCall.task)
def draws_task(payload: dict[str, Any], reply_key: str) -> None:
    """Write the fit's draws as a file (netCDF, CSV or Parquet) beside its results, and
    reply with its name and size."""

    def compute() -> FileWritten:
        call = DrawsCall.model_validate(payload)
        ctx = context()
        return write_draws(ctx.artifacts, call, _fitted(call), ctx.settings.max_export_values)

    answer(reply_key, compute)


@app.task(name=PlotCall.task)
def plot_task(payload: dict[str, Any], reply_key: str) -> None:
    """Draw one of the fit's plots (PNG or SVG) beside its results, and reply with its name
    and size."""

    def compute() -> FileWritten:
        call = PlotCall.model_validate(payload)
        return write_plot(context().artifacts, call, _fitted(call))

    answer(reply_key, compute)
