"""``GET /metrics``: the whole service's metrics in Prometheus' text format.

What every process recorded is in Redis (``service.core.metrics``); ``RedisCollector``
reads it at scrape time, with what is true right now: the depth of each broker queue
(``service.core.broker.queue_depths``: LLEN of its list, or RabbitMQ's message count; a
broker that does not answer leaves the depths out of that scrape), the worker processes
alive on each queue, and the fits in progress.
One scrape is one Redis pipeline and three small reads, whatever the number of fits.

The route is off with ``HBM_METRICS_ENABLED=false`` (404) and needs
``Authorization: Bearer <HBM_METRICS_TOKEN>`` when a token is set (401 otherwise).
API processes flush what they recorded every ``FLUSH_S`` (``MetricsFlusher``) and before
answering a scrape.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from redis import Redis

from service.core.broker import queue_depths
from service.core.errors import Unauthorized
from service.core.jobs import JobStore
from service.core.metrics import FAMILIES, RECORDER, Family, Recorder
from service.core.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between an API process's flushes of what it recorded.
FLUSH_S = 5.0

router = APIRouter()


class RedisCollector:
    """A Prometheus collector over the metrics in Redis and the service's live state."""

    def __init__(self, store: JobStore, queues: list[str], settings: Settings) -> None:
        self.store = store
        self.queues = queues
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now."""
        redis, prefix = self.store.redis, self.store.prefix
        pipe = redis.pipeline(transaction=False)
        for family in FAMILIES:
            pipe.hgetall(family.key(prefix))
        answers = pipe.execute()
        for family, stored in zip(FAMILIES, answers, strict=False):
            yield _family(family, {k.decode(): float(v) for k, v in stored.items()})
        depth = GaugeMetricFamily(
            "hbm_queue_depth", "Messages waiting in each broker queue.", labels=["queue"]
        )
        live = GaugeMetricFamily(
            "hbm_workers_live", "Worker processes alive on each queue.", labels=["queue"]
        )
        try:
            depths = queue_depths(self.settings, redis, self.queues)
        except Exception as exc:  # RabbitMQ away (a Redis outage fails the scrape above)
            log.warning("queue depths not read: %s", type(exc).__name__)
            depths = {}
        for queue in self.queues:
            if queue in depths:
                depth.add_metric([queue], float(depths[queue]))
            live.add_metric([queue], float(len(self.store.live_workers(queue))))
        yield depth
        yield live
        yield GaugeMetricFamily(
            "hbm_fits_in_progress",
            "Fits queued or running.",
            value=float(self.store.in_progress()),
        )


def _family(family: Family, stored: dict[str, float]) -> Metric:
    """One metric from its hash (label fields; a histogram's per-bucket fields)."""
    if family.kind == "counter":
        counter = CounterMetricFamily(family.name, family.help, labels=family.labels)
        totals: defaultdict[tuple[str, ...], float] = defaultdict(float)
        for field, value in stored.items():
            totals[tuple(json.loads(field))] += value
        for labels, value in sorted(totals.items()):
            counter.add_metric(list(labels), value)
        return counter
    series: defaultdict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for field, value in stored.items():
        names, part = field.rsplit("|", 1)
        values = series[tuple(json.loads(names))]
        values[part] = values.get(part, 0.0) + value
    histogram = HistogramMetricFamily(family.name, family.help, labels=family.labels)
    for labels, values in sorted(series.items()):
        bounds = {float(part[3:]) for part in values if part.startswith("le=")}
        bounds |= set(family.buckets)
        cumulative, buckets = 0.0, []
        for bound in sorted(bounds - {float("inf")}):
            cumulative += values.get(f"le={bound!r}", 0.0)
            buckets.append((_go_float(bound), cumulative))
        buckets.append(("+Inf", values.get("count", 0.0)))
        histogram.add_metric(list(labels), buckets, values.get("sum", 0.0))
    return histogram


def _go_float(bound: float) -> str:
    """A bucket bound as Prometheus' clients write it (``0.5``, ``1.0``)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class MetricsFlusher:
    """A daemon thread that flushes this process's recorder to Redis every ``FLUSH_S``."""

    def __init__(self, redis: Redis, prefix: str, recorder: Recorder = RECORDER) -> None:
        self.redis = redis
        self.prefix = prefix
        self.recorder = recorder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start flushing."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Flush now; a failure is logged and its amounts wait for the next flush."""
        try:
            self.recorder.flush(self.redis, self.prefix)
        except Exception as exc:
            log.warning("metrics not flushed: %s", type(exc).__name__)

    def stop(self) -> None:
        """Stop, and flush what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self.flush()


def registry_for(store: JobStore, settings: Settings) -> CollectorRegistry:
    """A registry holding only the service's collector (no process metrics of whichever
    API process answers)."""
    registry = CollectorRegistry(auto_describe=False)
    queues = [settings.fit_queue, settings.interactive_queue, settings.notify_queue]
    registry.register(RedisCollector(store, queues, settings))
    return registry


def check_token(authorization: str | None, settings: Settings) -> None:
    """401 unless no token is set or ``authorization`` is ``Bearer <token>``."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if not token:
        return
    expected = f"Bearer {token}".encode()
    if not hmac.compare_digest((authorization or "").encode(), expected):
        raise Unauthorized("send the metrics token as 'Authorization: Bearer <token>'")


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The Prometheus text exposition of every metric."""
    services = request.app.state.services
    check_token(request.headers.get("authorization"), services.settings)
    started = time.perf_counter()
    request.app.state.metrics_flusher.flush()
    body = generate_latest(request.app.state.metrics_registry)
    log.debug("metrics scraped in %.1f ms", 1000 * (time.perf_counter() - started))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
