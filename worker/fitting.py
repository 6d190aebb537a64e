"""One run of one fit: its lock, its phases, its limits, and how it ends.

``run_fit`` takes the fit's run lock (a delivery that finds it held is dropped), starts
the heartbeat and the watchdog, and runs the phases: read the request, build the model,
compile and sample, summarize, store, finish. ``finish`` is one atomic step in Redis that
also sees a cancel asked for meanwhile (then the fit ends ``cancelled`` and its results are
removed). Results are stored with a manifest before the fit is recorded as succeeded: a run
whose worker loses Redis at the end leaves its fit to the reconciler, and the next run
finds the results and finishes without sampling again.

Stopping. A fit stops for four reasons: ``cancelled`` (a client's DELETE), ``timeout``
(``sampler.time_limit_s``), ``out_of_memory`` (``HBM_MAX_FIT_RSS_MB``) and ``lock_lost``
(another run owns the fit). The watchdog thread looks every ``WATCH_S``. Sampling stops
cooperatively (nutpie is cancelled within half a second), and checkpoints between phases
stop a run that was asked to. Inside a phase that cannot be interrupted (building a model,
compiling it, summarizing), the watchdog waits ``STOP_GRACE_S`` (none for memory), records
the final state itself and ends the pool process: Celery puts the message back
(``reject_on_worker_lost``), the next delivery finds the fit final, removes whatever results
were half written, and drops the message. So every limit holds in every phase within about
a second, at the price of a fresh pool process (which forks warm from its parent).

Failures are data on the fit: ``error.reason`` is a ``FailureReason``. Every log line of a
run names the fit and the request that submitted it (``service.core.logs``); a fit that
succeeds records its phases (``service.core.metrics``), flushed to Redis after the run.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import threading
import time
import uuid
from importlib.metadata import version
from typing import Any

import psutil

from service.core.errors import DamagedResults, FitFailed, InvalidRequest, StorageError
from service.core.logs import working_on
from service.core.metrics import RECORDER, observe_fit
from service.core.schemas import (
    FailureReason,
    FitError,
    FitResource,
    FitSpec,
    FitStatus,
    Progress,
    Timings,
)
from worker.context import Context
from worker.heartbeat import BackgroundThread, Heartbeat
from worker.modeling import parameterization
from worker.modeling.building import build_model
from worker.modeling.sampling import PROGRESS_INTERVAL_S, STOP_MESSAGES, sample_with_refit
from worker.modeling.storage import result_files, spec_digest, stored_manifest, write_results
from worker.notify import notify_final
from worker.resilience import RedisUnavailable, best_effort, retry_redis

log = logging.getLogger(__name__)

LIBRARIES = ("bambi", "pymc", "pytensor", "arviz", "nutpie", "formulae", "numpy", "hbm-service")

#: Seconds between the watchdog's looks at the limits.
WATCH_S = 0.2
#: Seconds between looks at the cancel flag in Redis.
CANCEL_LOOK_S = 0.5
#: How long a phase that cannot be interrupted may run on after a stop was asked for.
STOP_GRACE_S = 1.0
#: The same while sampling, which stops by itself within half a second.
SAMPLING_GRACE_S = 5.0
#: Seconds to wait before each new try when results cannot be written (a disk full for a
#: moment); then the fit fails with reason ``storage_error``.
STORAGE_RETRIES_S = (1.0, 3.0)
#: Exit status of a pool process the watchdog ended.
HARD_STOP_EXIT = 70


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced a fit."""
    return {"python": platform.python_version()} | {name: version(name) for name in LIBRARIES}


def rss_mb() -> float:
    """Resident memory of this process, in MiB."""
    return float(psutil.Process().memory_info().rss) / 1024**2


class ThrottledProgress:
    """Writes progress to the job record at most every PROGRESS_INTERVAL_S seconds, as a
    report only: a Redis outage skips a write, it never stops the fit."""

    def __init__(self, run: FitRun) -> None:
        self.run = run
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        self.run.enter(progress.phase)
        now = time.monotonic()
        if progress.phase == "sampling" and now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        ctx, fit_id = self.run.ctx, self.run.fit_id
        best_effort(lambda: ctx.store.set_progress(fit_id, progress), what="progress report")


def run_fit(fit_id: str, ctx: Context) -> None:
    """The body of the fit task: one run at a time per fit, under a heartbeat lock."""
    deadline = ctx.settings.lock_ttl_s
    try:
        record = retry_redis(lambda: ctx.store.get(fit_id), deadline_s=deadline, what="read")
        if record is None or record.status.is_final:
            _tidy(fit_id, record, ctx)
            return
        token = uuid.uuid4().hex

        def acquire() -> bool:
            return ctx.store.acquire_lock(fit_id, token, ctx.settings.lock_ttl_s)

        if not retry_redis(acquire, deadline_s=deadline, what="take the run lock"):
            log.info("fit %s is running elsewhere; this delivery is dropped", fit_id)
            return
    except RedisUnavailable:
        log.warning("fit %s: Redis is away; the reconciler will send the fit again", fit_id)
        return
    run = FitRun(fit_id, record, ctx, token)
    try:
        with (
            working_on(fit_id, record.request_id),
            Heartbeat(ctx.store, fit_id, token, ctx.settings.lock_ttl_s) as heartbeat,
        ):
            run.heartbeat = heartbeat
            with Watchdog(run):
                run.run()
    finally:
        best_effort(lambda: ctx.store.release_lock(fit_id, token), what="release the lock")
        best_effort(lambda: RECORDER.flush(ctx.store.redis, ctx.store.prefix), what="metrics")
        # The model's design matrices and draws go now, not at some later collection:
        # Celery judges the process's size right after the task (worker_recycle_rss_mb).
        gc.collect()
        # What survives is long-lived (modules, compiled models): later collections skip it.
        # A full collection walked all of it, 0.2-0.3 s that the next fit waited for.
        gc.freeze()


def _tidy(fit_id: str, record: FitResource | None, ctx: Context) -> None:
    """A delivery of a fit that is final or gone: a fit that did not succeed keeps no
    results (a run stopped mid-phase may have written some)."""
    log.info("fit %s: nothing to do (%s)", fit_id, record and record.status)
    if record is not None and record.status is not FitStatus.SUCCEEDED:
        try:
            ctx.artifacts.discard_results(fit_id)
        except StorageError:
            log.warning("fit %s: leftover results could not be removed", fit_id)


class FitRun:
    """One run of a fit, from its attempt to its final status."""

    def __init__(self, fit_id: str, record: FitResource, ctx: Context, token: str) -> None:
        self.fit_id = fit_id
        self.record = record
        self.ctx = ctx
        self.token = token
        self.heartbeat: Heartbeat | None = None
        self.deadline = time.monotonic() + record.sampler.time_limit_s
        self.phase = "starting"
        self._reason: str | None = None
        self._reason_since = 0.0
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------- stopping

    def stop_reason(self) -> str | None:
        """Why this run must stop, if it must (asked by the sampler and at checkpoints)."""
        return self._reason

    def ask_stop(self, reason: str) -> None:
        """Record the first reason to stop."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
                self._reason_since = time.monotonic()

    def checkpoint(self) -> None:
        """Between phases: stop here if asked to."""
        reason = self._reason
        if reason is not None:
            raise FitFailed(reason, STOP_MESSAGES[reason])

    def enter(self, phase: str) -> None:
        """The run moves to ``phase`` (progress reports tell when sampling starts)."""
        with self._lock:
            if self.phase not in ("finishing", "done"):
                self.phase = phase

    def overdue(self) -> str | None:
        """A reason to stop that the current phase has not honoured within its grace."""
        with self._lock:
            if self._reason is None or self.phase in ("finishing", "done"):
                return None
            grace = SAMPLING_GRACE_S if self.phase == "sampling" else STOP_GRACE_S
            if self._reason == "out_of_memory" and self.phase != "sampling":
                grace = 0.0
            if time.monotonic() - self._reason_since < grace:
                return None
            self.phase = "done"  # from now on only the watchdog ends this run
            return self._reason

    def _start_finishing(self) -> None:
        with self._lock:
            self.checkpoint()
            self.phase = "finishing"

    # --------------------------------------------------------------------------- phases

    def run(self) -> None:
        """Every phase, and the final status whatever happens."""
        try:
            self._run()
        except FitFailed as exc:
            if exc.reason == "lock_lost":
                log.warning("fit %s: stopped, another run owns it now", self.fit_id)
            elif exc.reason == "cancelled":
                log.info("fit %s cancelled while running", self.fit_id)
                self.end(FitStatus.CANCELLED)
            else:
                self.fail(exc.reason, exc.message)
        except InvalidRequest as exc:
            self.fail(FailureReason.INVALID_REQUEST, exc.detail)
        except (StorageError, DamagedResults) as exc:
            log.warning("fit %s: storage failed: %s", self.fit_id, exc)
            self.fail(FailureReason.STORAGE_ERROR, f"{exc.detail}; submit the fit again later")
        except RedisUnavailable:
            log.warning("fit %s: Redis is away; the fit is left to the reconciler", self.fit_id)
        except Exception:
            log.exception("fit %s failed unexpectedly", self.fit_id)
            self.fail(
                FailureReason.INTERNAL_ERROR, "the fit failed unexpectedly; the error was logged"
            )
        finally:
            self.enter("done")

    def _run(self) -> None:
        ctx, fit_id = self.ctx, self.fit_id
        deadline = 2 * ctx.settings.lock_ttl_s
        attempt = retry_redis(
            lambda: ctx.store.start_attempt(fit_id), deadline_s=deadline, what="start"
        )
        if attempt is None:
            log.info("fit %s was cancelled before it started", fit_id)
            return
        if attempt > ctx.settings.max_attempts:
            message = f"the fit lost its worker {attempt - 1} times and was not run again"
            self.fail(FailureReason.WORKER_LOST, message)
            return
        log.info("fit %s: attempt %d started", fit_id, attempt)
        started = time.perf_counter()
        timings = Timings(queued_s=(time.time() - self.record.created_at.timestamp()))
        spec = self._spec()
        manifest = stored_manifest(ctx.artifacts, fit_id, spec)
        if manifest is not None:
            log.info("fit %s: results of an earlier run are complete; finishing", fit_id)
            self._start_finishing()
            self.end(
                FitStatus.SUCCEEDED,
                timings=Timings(**manifest["timings"]),
                versions=manifest["versions"],
            )
            return
        progress = ThrottledProgress(self)
        progress(Progress(phase="compiling", fraction=0.0))
        model = build_model(spec)
        self.checkpoint()
        choice = parameterization.apply(model, spec.sampler.parameterization)
        result, runs = sample_with_refit(
            model,
            spec.sampler,
            progress,
            compiled_models=ctx.compiled,
            centre_on=choice.centre_on_intercept,
            cores=ctx.settings.sampler_cores,
            stop_reason=self.stop_reason,
        )
        self.checkpoint()
        progress(Progress(phase="summarizing", fraction=1.0))
        summarizing = time.perf_counter()
        files = result_files(
            model, result.posterior, result.sample_stats, fit_id, choice, result.likelihood, runs
        )
        self.checkpoint()
        timings.build_s = result.build_s
        timings.compile_s = result.compile_s
        timings.compiled = result.compiled_now
        timings.sampling_s = sum(run.sampling_s for run in runs)
        timings.summarize_s = time.perf_counter() - summarizing
        timings.total_s = time.perf_counter() - started
        versions = library_versions()
        manifest = {
            "spec_digest": spec_digest(spec),
            "timings": timings.model_dump(),
            "versions": versions,
        }
        self._store(files, manifest)
        self._start_finishing()
        if self.end(FitStatus.SUCCEEDED, timings=timings, versions=versions) is FitStatus.SUCCEEDED:
            observe_fit(timings)
            log.info("fit %s succeeded in %.2f s", fit_id, timings.total_s)

    def _store(self, files: dict[str, bytes | memoryview], manifest: dict[str, Any]) -> None:
        """Write the results; a failing disk gets ``STORAGE_RETRIES_S`` more chances."""
        for wait in (*STORAGE_RETRIES_S, None):
            try:
                write_results(self.ctx.artifacts, self.fit_id, files, manifest)
                return
            except StorageError:
                if wait is None:
                    raise
                log.warning("fit %s: storing failed; trying again in %s s", self.fit_id, wait)
                self.checkpoint()
                time.sleep(wait)

    def _spec(self) -> FitSpec:
        try:
            return self.ctx.artifacts.read_spec(self.fit_id)
        except FileNotFoundError as exc:
            raise StorageError("the fit's request was not found in the storage") from exc

    # ---------------------------------------------------------------------------- ends

    def fail(self, reason: str, message: str) -> None:
        """End the fit as failed, with its reason (a ``FailureReason``) as data."""
        log.info("fit %s failed: %s", self.fit_id, reason)
        error = FitError(reason=FailureReason(reason), message=message)
        self.end(FitStatus.FAILED, error=error)

    def end(
        self,
        status: FitStatus,
        *,
        timings: Timings | None = None,
        versions: dict[str, str] | None = None,
        error: FitError | None = None,
    ) -> FitStatus | None:
        """Record the final status (atomically against a cancel); a fit that does not end
        succeeded keeps no results. The status it ended with; None if another run owns it."""
        ctx, fit_id = self.ctx, self.fit_id
        final = retry_redis(
            lambda: ctx.store.finish(
                fit_id, status, token=self.token, timings=timings, versions=versions, error=error
            ),
            deadline_s=max(2 * ctx.settings.lock_ttl_s, 30),
            what="record the end of the fit",
        )
        if final is not None and final is not FitStatus.SUCCEEDED:
            try:
                ctx.artifacts.discard_results(fit_id)
            except StorageError:
                log.warning("fit %s: its results could not be removed", fit_id)
        if final is not None and final.is_final:
            notify_final(ctx.store, fit_id, final)  # its notify_url, once (worker.notify)
        if final is not status:
            log.info("fit %s ended %s (asked: %s)", fit_id, final, status.value)
        return final

    def hard_stop(self, reason: str) -> None:
        """End a run stuck in a phase that cannot be interrupted: record its final state,
        then end this pool process (Celery puts the message back; see the module doc)."""
        log.warning("fit %s: %s while %s; ending the pool process", self.fit_id, reason, self.phase)
        try:
            if reason == "cancelled":
                self.end(FitStatus.CANCELLED)
            elif reason != "lock_lost":
                self.fail(reason, STOP_MESSAGES[reason])
        except Exception:
            log.exception("fit %s: could not record the stop", self.fit_id)
        finally:
            store = self.ctx.store
            best_effort(lambda: RECORDER.flush(store.redis, store.prefix), what="metrics")
            logging.shutdown()
            os._exit(HARD_STOP_EXIT)


class Watchdog(BackgroundThread):
    """Context manager: a thread that watches a run's limits and stops it (see module doc)."""

    def __init__(self, fit: FitRun) -> None:
        super().__init__(f"watchdog-{fit.fit_id}")
        self.fit = fit
        self._next_cancel_look = 0.0

    def reason_now(self) -> str | None:
        """Why the run must stop now, if it must."""
        run, settings = self.fit, self.fit.ctx.settings
        if run.heartbeat is not None and run.heartbeat.lost.is_set():
            return "lock_lost"
        if time.monotonic() >= self._next_cancel_look:
            self._next_cancel_look = time.monotonic() + CANCEL_LOOK_S
            try:
                if run.ctx.store.cancel_requested(run.fit_id):
                    return "cancelled"
            except Exception:  # Redis away: look again next time
                log.debug("fit %s: cancel flag not readable", run.fit_id)
        if time.monotonic() > run.deadline:
            return "timeout"
        if rss_mb() > settings.max_fit_rss_mb:
            return "out_of_memory"
        return None

    def run(self) -> None:
        """Look at the limits every ``WATCH_S``; ask the run to stop, or end it."""
        while not self._stop.wait(WATCH_S):
            reason = self.reason_now()
            if reason is not None:
                self.fit.ask_stop(reason)
            overdue = self.fit.overdue()
            if overdue is not None:
                self.fit.hard_stop(overdue)
