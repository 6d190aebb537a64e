"""Redis outages are infrastructure faults, not a fit's failure.

The worker's calls to the job store go through ``retry_redis``: a call that cannot reach
Redis is tried again with backoff until its deadline, then ``RedisUnavailable`` is raised.
A run that meets it leaves the fit as it is: its lock lapses and the reconciler hands the fit
to a new run, which finds the results already stored (see ``worker.fitting``). Calls that
only report (progress) use ``best_effort`` and never stop a fit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

#: What a Redis outage (down, restarting, stopped, loading) raises in redis-py.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


class RedisUnavailable(Exception):
    """Redis did not answer within the deadline of a call."""


def retry_redis[T](action: Callable[[], T], *, deadline_s: float, what: str) -> T:
    """``action()``, tried again with backoff (0.1 s doubling to 1 s) while Redis is
    unreachable, for at most ``deadline_s`` seconds."""
    delay = 0.1
    end = time.monotonic() + deadline_s
    while True:
        try:
            return action()
        except REDIS_DOWN as exc:
            if time.monotonic() + delay > end:
                raise RedisUnavailable(f"Redis did not answer while trying to {what}") from exc
            log.warning("Redis unreachable while trying to %s; retrying", what)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def best_effort(action: Callable[[], object], *, what: str) -> bool:
    """``action()`` once; a Redis outage is logged and skipped. Whether it ran."""
    try:
        action()
    except REDIS_DOWN:
        log.warning("Redis unreachable; skipped: %s", what)
        return False
    return True
