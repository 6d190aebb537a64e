"""Thin Celery tasks: load the job, call the modelling functions, store, set the status."""

from __future__ import annotations

import gc
import json
import logging
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from typing import Any

import psutil
from redis import Redis

from service.core import tasks
from service.core.artifacts import Artifacts
from service.core.errors import FitFailed, InvalidRequest, NotFound
from service.core.jobs import JobStore, is_fit_id, utcnow
from service.core.schemas import FitError, FitResource, FitSpec, FitStatus, Progress, Timings
from service.core.settings import Settings, get_settings
from worker.celery_app import app
from worker.heartbeat import Heartbeat
from worker.modeling import parameterization
from worker.modeling.building import build_model, frame
from worker.modeling.cache import FittedModel, FittedModelCache
from worker.modeling.compiled import CompiledModels
from worker.modeling.describe import describe
from worker.modeling.prediction import predict
from worker.modeling.sampling import PROGRESS_INTERVAL_S, sample
from worker.modeling.storage import store_results
from worker.modeling.summaries import group_effects, summarize

log = logging.getLogger(__name__)

LIBRARIES = ("bambi", "pymc", "pytensor", "arviz", "nutpie", "formulae", "numpy", "hbm-service")


@dataclass
class Context:
    """What the tasks of one worker process share."""

    settings: Settings
    store: JobStore
    artifacts: Artifacts
    cache: FittedModelCache
    compiled: CompiledModels


@cache
def context() -> Context:
    """The process's context, created on first use (after the pool has forked)."""
    settings = get_settings()
    artifacts = Artifacts(settings.data_dir)
    return Context(
        settings=settings,
        store=JobStore(Redis.from_url(settings.redis_url), retention_s=settings.retention_s),
        artifacts=artifacts,
        cache=FittedModelCache(artifacts, settings.model_cache_size),
        compiled=CompiledModels(settings.compiled_cache_size),
    )


def rss_mb() -> float:
    """Resident memory of this process, in MiB."""
    return float(psutil.Process().memory_info().rss) / 1024**2


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced a fit."""
    return {"python": platform.python_version()} | {name: version(name) for name in LIBRARIES}


class ThrottledProgress:
    """Writes progress to the job record at most every PROGRESS_INTERVAL_S seconds."""

    def __init__(self, store: JobStore, fit_id: str) -> None:
        self.store = store
        self.fit_id = fit_id
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.phase == "sampling" and now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        self.store.set_progress(self.fit_id, progress)


@app.task(name=tasks.FIT)
def fit(fit_id: str) -> None:
    """Fit one queued model. Safe to run again: a finished fit is left alone."""
    run_fit(fit_id, context())


def run_fit(fit_id: str, ctx: Context) -> None:
    """The body of the fit task: one run at a time per fit, under a heartbeat lock."""
    record = ctx.store.get(fit_id)
    if record is None or record.status.is_final:
        log.info("fit %s: nothing to do (%s)", fit_id, record and record.status)
        return
    token = uuid.uuid4().hex
    if not ctx.store.acquire_lock(fit_id, token, ctx.settings.lock_ttl_s):
        log.info("fit %s is running elsewhere; this delivery is dropped", fit_id)
        return
    try:
        with Heartbeat(ctx.store, fit_id, token, ctx.settings.lock_ttl_s) as heartbeat:
            _run_locked(fit_id, record, ctx, heartbeat)
    finally:
        ctx.store.release_lock(fit_id, token)
        # The model's design matrices and draws go now, not at some later collection:
        # Celery judges the process's size right after the task (worker_recycle_rss_mb).
        gc.collect()
        # What survives is long-lived (modules, compiled models): later collections skip it.
        # A full collection walked all of it, 0.2-0.3 s that the next fit waited for.
        gc.freeze()


def _run_locked(fit_id: str, record: FitResource, ctx: Context, heartbeat: Heartbeat) -> None:
    attempt = ctx.store.start_attempt(fit_id)
    if attempt is None:
        log.info("fit %s was cancelled before it started", fit_id)
        return
    if attempt > ctx.settings.max_attempts:
        message = f"the fit lost its worker {attempt - 1} times and was not run again"
        _fail(ctx, fit_id, "worker_lost", message)
        return
    started = time.perf_counter()
    deadline = time.monotonic() + record.sampler.time_limit_s

    def stop_reason() -> str | None:
        if heartbeat.lost.is_set():
            return "lock_lost"
        if ctx.store.cancel_requested(fit_id):
            return "cancelled"
        if time.monotonic() > deadline:
            return "timeout"
        if rss_mb() > ctx.settings.max_fit_rss_mb:
            return "out_of_memory"
        return None

    timings = Timings(queued_s=(utcnow() - record.created_at).total_seconds())
    try:
        spec = ctx.artifacts.read_spec(fit_id)
        model = build_model(spec)
        choice = parameterization.apply(model, spec.sampler.parameterization)
        result = sample(
            model,
            spec.sampler,
            ThrottledProgress(ctx.store, fit_id),
            compiled_models=ctx.compiled,
            centre_on=choice.centre_on_intercept,
            cores=ctx.settings.sampler_cores,
            stop_reason=stop_reason,
        )
        ctx.store.set_progress(fit_id, Progress(phase="summarizing", fraction=1.0))
        summarizing = time.perf_counter()
        store_results(
            ctx.artifacts,
            fit_id,
            model,
            result.posterior,
            result.sample_stats,
            choice,
            result.likelihood,
        )
        timings.build_s = result.build_s
        timings.compile_s = result.compile_s
        timings.compiled = result.compiled_now
        timings.sampling_s = result.sampling_s
        timings.summarize_s = time.perf_counter() - summarizing
        timings.total_s = time.perf_counter() - started
        # Cancelled (or taken over) while summarising: the results are not published.
        if heartbeat.lost.is_set():
            raise FitFailed("lock_lost", "another run owns the fit")
        if ctx.store.cancel_requested(fit_id):
            raise FitFailed("cancelled", "the fit was cancelled")
        ctx.store.finish(fit_id, FitStatus.SUCCEEDED, timings=timings, versions=library_versions())
    except FitFailed as exc:
        if exc.reason == "lock_lost":
            log.warning("fit %s: stopped, another run owns it now", fit_id)
        elif exc.reason == "cancelled":
            log.info("fit %s cancelled while running", fit_id)
            ctx.store.finish(fit_id, FitStatus.CANCELLED)
        else:
            _fail(ctx, fit_id, exc.reason, exc.message)
    except InvalidRequest as exc:
        _fail(ctx, fit_id, "invalid_request", exc.detail)
    except Exception:
        log.exception("fit %s failed unexpectedly", fit_id)
        _fail(ctx, fit_id, "internal_error", "the fit failed unexpectedly; the error was logged")


def _fail(ctx: Context, fit_id: str, reason: str, message: str) -> None:
    log.info("fit %s failed: %s", fit_id, reason)
    ctx.store.finish(fit_id, FitStatus.FAILED, error=FitError(reason=reason, message=message))


# ------------------------------------------------------------------- synchronous calls


def _reply(reply_key: str, compute: Callable[[], Any]) -> None:
    """Run ``compute`` and push its answer, or the error as data, to ``reply_key``."""
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
    except Exception:
        log.exception("call on %s failed", reply_key)
        message = {"error": {"status": 500, "detail": "the worker failed to answer"}}
    redis = context().store.redis
    pipe = redis.pipeline()
    pipe.rpush(reply_key, json.dumps(message))
    pipe.expire(reply_key, tasks.REPLY_TTL_S)
    pipe.execute()


def _fitted(fit_id: str) -> FittedModel:
    if not is_fit_id(fit_id):
        raise NotFound("no such fit")
    try:
        return context().cache.get(fit_id)
    except FileNotFoundError as exc:
        raise NotFound("the fit's results are not stored any more") from exc


@app.task(name=tasks.PREDICT, acks_late=False)
def predict_task(payload: dict[str, Any], reply_key: str) -> None:
    """Predict new rows from a fitted model and reply."""

    def compute() -> Any:
        fitted = _fitted(payload["fit_id"])
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


@app.task(name=tasks.RESULTS, acks_late=False)
def results_task(payload: dict[str, Any], reply_key: str) -> None:
    """Summary or group effects at a requested interval, and reply."""

    def compute() -> Any:
        fitted = _fitted(payload["fit_id"])
        shape = summarize if payload["what"] == "summary" else group_effects
        return shape(
            fitted.model, fitted.posterior, payload["fit_id"], payload["interval"], payload["prob"]
        )

    _reply(reply_key, compute)


@app.task(name=tasks.DESCRIBE, acks_late=False)
def describe_task(payload: dict[str, Any], reply_key: str) -> None:
    """Build (but do not sample) a model and describe it: the dry run."""

    def compute() -> Any:
        spec = FitSpec.model_validate(payload["spec"])
        return {**describe(build_model(spec)), "n_dropped": spec.n_dropped}

    _reply(reply_key, compute)
