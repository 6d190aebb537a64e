"""The Celery broker: Redis (the default) or RabbitMQ, and what the service reads from it.

Job records and call replies always live in Redis (``REDIS_URL``); the broker only carries
task messages. ``HBM_BROKER_URL`` picks it: unset or empty, the Redis at ``REDIS_URL``;
``amqp://user:password@host:5672/vhost``, RabbitMQ (Celery's recommended broker, whose
acknowledgements are real instead of a visibility timeout). Everything that differs between
the two is settled here, so that the API's producer (``service.api.dispatch``), the workers
(``worker.celery_app``), the reconciler and the metrics agree:

- **a fetched, unacknowledged message**: Redis hands it out again after the visibility
  timeout (set above the longest fit, ``delivery_timeout_s``); RabbitMQ as soon as the
  worker's connection closes, and would close a channel whose delivery stays
  unacknowledged past its consumer timeout (30 minutes by default, shorter than a long
  fit): every worker consumes with ``x-consumer-timeout`` = ``delivery_timeout_s``
  (RabbitMQ 3.11.15 and later; an older server ignores it and needs ``consumer_timeout``
  raised in its configuration: the worker says so when it starts, ``check_server``).
- **queues**: RabbitMQ's are classic durable queues (Celery's default), messages
  persistent, one direct exchange per queue; publisher confirms are on, so a message the
  broker did not take is an error, never a silent loss. The API's producer sends no
  heartbeats (it has no event loop to answer them; a dead connection is found by its next
  publish, whose confirm never comes).
- **queue depth** (``queue_depths``): LLEN of the queue's list; RabbitMQ: the message count
  of a passive ``queue.declare``. Both count the messages waiting, not those delivered.
- **which fits have a message** (``fits_in_broker``): Redis' queue and unacknowledged
  messages are lists that can be read; RabbitMQ's queue cannot be browsed without consuming
  it, so it can only say that no fit has a ready message once its queue is empty.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.utils.url import maybe_sanitize_url
from redis import Redis

from service.core.settings import Settings

log = logging.getLogger(__name__)

#: URL schemes of RabbitMQ (Celery's py-amqp transport).
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
#: The first RabbitMQ that honours a consumer's ``x-consumer-timeout``.
CONSUMER_TIMEOUT_SINCE = (3, 11, 15)
#: A fit id (``new_fit_id``: 32 hex digits) as it appears in a Celery message's headers.
FIT_ID_IN_MESSAGE = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def broker_url(settings: Settings) -> str:
    """The broker's URL: ``HBM_BROKER_URL``, or the Redis at ``REDIS_URL``."""
    return settings.broker_url or settings.redis_url


def is_amqp(url: str) -> bool:
    """Whether ``url`` names a RabbitMQ (AMQP) broker rather than Redis."""
    return url.partition("://")[0].lower() in AMQP_SCHEMES


def shown(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return str(maybe_sanitize_url(url))


def delivery_timeout_s(settings: Settings) -> int:
    """How long a worker may hold a message unacknowledged before the broker hands it to
    another: above the longest fit (Redis' visibility timeout, RabbitMQ's consumer
    timeout)."""
    return settings.max_fit_time_limit_s + 600


def queue_names(settings: Settings) -> list[str]:
    """Every queue the service uses: fits, calls, notifications."""
    return [settings.fit_queue, settings.interactive_queue, settings.notify_queue]


def task_queues(settings: Settings) -> list[Queue]:
    """RabbitMQ's queues as Celery declares them (classic, durable, a direct exchange
    each), consumed with a consumer timeout above the longest fit."""
    timeout_ms = delivery_timeout_s(settings) * 1000
    return [
        Queue(  # type: ignore[no-untyped-call]
            name,
            Exchange(name, type="direct"),  # type: ignore[no-untyped-call]
            routing_key=name,
            consumer_arguments={"x-consumer-timeout": timeout_ms},
        )
        for name in queue_names(settings)
    ]


def celery_options(settings: Settings, *, producer: bool) -> dict[str, Any]:
    """The broker's own Celery settings, for the API's producer or for a worker."""
    timeout = settings.redis_timeout_s
    transport: dict[str, Any]
    if is_amqp(broker_url(settings)):
        transport = {"confirm_publish": True}
        options: dict[str, Any] = {"task_queues": task_queues(settings)}
        if producer:  # a hung broker costs a request this long, as Redis does
            transport |= {"read_timeout": timeout, "write_timeout": timeout}
            options["broker_heartbeat"] = 0
        return options | {"broker_transport_options": transport}
    transport = {"visibility_timeout": delivery_timeout_s(settings)}
    if producer:
        transport |= {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "max_retries": 1,
        }
    return {"broker_transport_options": transport}


def _broker_redis(settings: Settings, redis: Redis | None) -> tuple[Redis, bool]:
    """A client of the broker's Redis: ``redis`` (the job store's) when the broker is the
    same server and database, else a new one; and whether the caller must close it."""
    url = broker_url(settings)
    if redis is not None and url == settings.redis_url:
        return redis, False
    timeout = settings.redis_timeout_s
    client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return client, True


def _amqp_connection(url: str, timeout_s: float) -> Connection:
    return Connection(  # type: ignore[no-untyped-call]
        url,
        connect_timeout=timeout_s,
        heartbeat=0,
        transport_options={"read_timeout": timeout_s, "write_timeout": timeout_s},
    )


def amqp_depths(url: str, queues: Sequence[str], timeout_s: float) -> dict[str, int]:
    """The ready messages of each RabbitMQ queue (0 for a queue not declared yet)."""
    depths: dict[str, int] = {}
    with _amqp_connection(url, timeout_s) as connection:
        channel = connection.channel()
        for name in queues:
            try:
                depths[name] = int(channel.queue_declare(name, passive=True).message_count)
            except connection.channel_errors:  # no such queue: nothing waits in it
                depths[name] = 0
                channel = connection.channel()  # the error closed the channel
    return depths


def queue_depths(
    settings: Settings, redis: Redis | None = None, queues: Sequence[str] | None = None
) -> dict[str, int]:
    """Messages waiting in each broker queue (default: every queue of the service), read
    now. ``redis``: the job store's client, used when the broker is the same Redis."""
    names = list(queue_names(settings) if queues is None else queues)
    url = broker_url(settings)
    if is_amqp(url):
        return amqp_depths(url, names, settings.redis_timeout_s)
    client, own = _broker_redis(settings, redis)
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        return {name: int(length) for name, length in zip(names, pipe.execute(), strict=True)}
    finally:
        if own:
            client.close()


def ids_in_broker(broker: Redis, queue: str) -> set[str]:
    """Every fit id a Redis broker holds a message for on ``queue`` (queued, or delivered
    and unacked), read in one pass: a set, so that checking a thousand queued fits costs a
    thousand lookups, not a thousand searches through every message."""
    queued = broker.lrange(queue, 0, -1)
    unacked = broker.hvals("unacked")
    messages = b"\n".join([*queued, *unacked])  # type: ignore[list-item]
    return {match.decode() for match in FIT_ID_IN_MESSAGE.findall(messages)}


def fits_in_broker(settings: Settings, redis: Redis | None, queue: str) -> set[str] | None:
    """The fit ids the broker holds a message for on ``queue``, or None when it cannot
    tell. Redis: read from its lists. RabbitMQ: an empty set once the queue holds no ready
    message, else None (any queued fit's message may be among them); a message delivered
    to a worker is the running fit's, or a fit's that is starting."""
    if is_amqp(broker_url(settings)):
        return set() if queue_depths(settings, queues=[queue])[queue] == 0 else None
    client, own = _broker_redis(settings, redis)
    try:
        return ids_in_broker(client, queue)
    finally:
        if own:
            client.close()


def server_version(connection: Connection) -> tuple[int, ...] | None:
    """The RabbitMQ version a connection's server announced, or None (Redis, unknown)."""
    try:
        properties = getattr(connection.connection, "server_properties", None) or {}
    except Exception:  # not connected: nothing to tell
        return None
    version = properties.get("version")
    if isinstance(version, bytes):
        version = version.decode(errors="replace")
    numbers = re.findall(r"\d+", version) if isinstance(version, str) else []
    return tuple(int(n) for n in numbers[:3]) or None


def check_server(connection: Connection, settings: Settings) -> None:
    """Warn when a RabbitMQ server is too old to honour the workers' consumer timeout: a
    fit running past the server's ``consumer_timeout`` (30 minutes by default) has its
    channel closed and its message handed out again (the second delivery finds the run
    lock held and stands down, but the worker reconnects and may fetch another fit)."""
    version = server_version(connection)
    if version is None or version >= CONSUMER_TIMEOUT_SINCE:
        return
    log.warning(
        "RabbitMQ %s ignores x-consumer-timeout (%s and later honour it): unless its "
        "consumer_timeout is above the longest fit already, set consumer_timeout = %d "
        "(milliseconds) in rabbitmq.conf",
        ".".join(map(str, version)),
        ".".join(map(str, CONSUMER_TIMEOUT_SINCE)),
        delivery_timeout_s(settings) * 1000,
    )
