"""The service's metrics, recorded by every process and kept in Redis.

Workers are separate processes, possibly on other hosts, and the API may run several
processes behind one port, so no process can answer a scrape from its own memory alone.
Each process adds what it observed to Redis hashes, one per metric, and the API's
``GET /metrics`` reads them at scrape time (``service.api.metrics``): every API process
answers the same totals, and counters stay monotonic across restarts of any process (they
start again only if Redis loses its data, which Prometheus reads as a counter reset).

Recording is a dict update under a lock (microseconds); ``Recorder.flush`` adds what was
recorded since the last flush in one MULTI/EXEC pipeline of HINCRBYFLOAT. Workers flush
after each fit and each call, API processes every few seconds and before they answer a
scrape. A flush that fails keeps its amounts for the next one. Fits that end are counted
by the job store's scripts themselves, in the atomic step that makes them final
(``hbm_fits_finished_total``; see ``service.core.jobs``).

Layout: ``{prefix}:metrics:{name}``, a hash whose fields are the label values as a JSON
list (``["/v1/fits/{fit_id}","GET","200"]``); a histogram's fields add ``|le=<bound>`` (the
observations in that bucket alone; the scrape accumulates them), ``|sum`` and ``|count``.
Every label has a bounded set of values (route templates, methods, statuses, reasons,
phases, call names): no id is ever a label.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from redis import Redis

from service.core.schemas import Timings

#: Request and call latencies, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
#: Phases of a fit, seconds (a fit may run for hours).
PHASE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)


@dataclass(frozen=True)
class Family:
    """One metric: its name as exposed, its help text, its kind and label names."""

    name: str
    help: str
    kind: Literal["counter", "histogram"]
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def key(self, prefix: str = "hbm") -> str:
        """The Redis hash holding it."""
        return f"{prefix}:metrics:{self.name}"


HTTP_REQUESTS = Family(
    "hbm_http_requests_total",
    "API requests answered, by route template, method and status.",
    "counter",
    ("route", "method", "status"),
)
HTTP_DURATION = Family(
    "hbm_http_request_duration_seconds",
    "Seconds the API took to answer a request, by route template and method.",
    "histogram",
    ("route", "method"),
    LATENCY_BUCKETS,
)
FITS_SUBMITTED = Family(
    "hbm_fits_submitted_total",
    "Fits created (a request answered with an existing fit is not counted).",
    "counter",
)
FITS_FINISHED = Family(
    "hbm_fits_finished_total",
    "Fits that ended, by status (succeeded, failed, cancelled) and error.reason when failed.",
    "counter",
    ("status", "reason"),
)
FIT_PHASES = Family(
    "hbm_fit_phase_duration_seconds",
    "Seconds each phase of a succeeded fit took: queued, build, compile, sample, summarize.",
    "histogram",
    ("phase",),
    PHASE_BUCKETS,
)
FIT_COMPILED = Family(
    "hbm_fit_compiled_models_total",
    "Succeeded fits by whether they reused a model compiled for the same structure.",
    "counter",
    ("reused",),
)
CALLS = Family(
    "hbm_worker_call_duration_seconds",
    "Seconds a worker took to answer a call (predict, summary, groups, describe, loo, "
    "compare, ppc), by outcome (ok, error).",
    "histogram",
    ("call", "outcome"),
    LATENCY_BUCKETS,
)

#: Every metric kept in Redis, in the order a scrape shows them.
FAMILIES = (
    HTTP_REQUESTS,
    HTTP_DURATION,
    FITS_SUBMITTED,
    FITS_FINISHED,
    FIT_PHASES,
    FIT_COMPILED,
    CALLS,
)


def label_field(values: Sequence[str]) -> str:
    """A hash field naming label values (compact JSON, as Lua's cjson writes it)."""
    return _label_field(tuple(values))


@lru_cache(maxsize=4096)  # label values are few: each field is encoded once
def _label_field(values: tuple[str, ...]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


def bound_text(bound: float) -> str:
    """A bucket's upper bound as a field suffix (``0.5``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Recorder:
    """What this process observed since its last flush, per (metric, field)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: defaultdict[tuple[str, str], float] = defaultdict(float)

    def inc(self, family: Family, labels: Sequence[str] = (), amount: float = 1.0) -> None:
        """Add ``amount`` to a counter."""
        assert family.kind == "counter" and len(labels) == len(family.labels), family.name
        field = label_field(labels)
        with self._lock:
            self._pending[family.name, field] += amount

    def observe(self, family: Family, value: float, labels: Sequence[str] = ()) -> None:
        """Count one observation of a histogram (its bucket, sum and count)."""
        assert family.kind == "histogram" and len(labels) == len(family.labels), family.name
        field = label_field(labels)
        index = bisect.bisect_left(family.buckets, value)
        bound = family.buckets[index] if index < len(family.buckets) else float("inf")
        with self._lock:
            self._pending[family.name, f"{field}|le={bound_text(bound)}"] += 1
            self._pending[family.name, f"{field}|sum"] += value
            self._pending[family.name, f"{field}|count"] += 1

    def pending(self) -> dict[tuple[str, str], float]:
        """A copy of what the next flush would add."""
        with self._lock:
            return dict(self._pending)

    def clear(self) -> None:
        """Forget what was recorded and not flushed."""
        with self._lock:
            self._pending.clear()

    def flush(self, redis: Redis, prefix: str = "hbm") -> int:
        """Add what was recorded to Redis in one atomic pipeline; how many fields it
        touched. On an error the amounts are kept for the next flush, and it is raised."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
        if not pending:
            return 0
        pipe = redis.pipeline(transaction=True)
        for (name, field), amount in pending.items():
            pipe.hincrbyfloat(f"{prefix}:metrics:{name}", field, amount)
        try:
            pipe.execute()
        except Exception:
            with self._lock:
                for item, amount in pending.items():
                    self._pending[item] += amount
            raise
        return len(pending)


#: The process's recorder.
RECORDER = Recorder()


def observe_fit(timings: Timings, recorder: Recorder = RECORDER) -> None:
    """Record the phases of a fit that succeeded, and whether it compiled its model."""
    phases = {
        "queued": timings.queued_s,
        "build": timings.build_s,
        "compile": timings.compile_s,
        "sample": timings.sampling_s,
        "summarize": timings.summarize_s,
    }
    for phase, seconds in phases.items():
        if seconds is not None:
            recorder.observe(FIT_PHASES, max(seconds, 0.0), (phase,))
    if timings.compiled is not None:
        recorder.inc(FIT_COMPILED, ("false" if timings.compiled else "true",))
