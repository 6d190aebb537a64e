"""When to send a request again, and after how long: decisions only, no I/O.

A 429 or 503 is retried after the ``Retry-After`` the service sent (it sends one with
both); without one, or after a connection error, after an exponential backoff with jitter
(so that many clients refused at once do not come back at once). Connection errors are
retried only for idempotent calls; every call of this client is one (reads, predictions and
comparisons change nothing, and ``POST /v1/fits`` carries an ``Idempotency-Key``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Statuses that mean "later", not "no": over a quota, or the service not ready.
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most ``max_retries`` after the first attempt.

    ``backoff_s`` doubles per retry up to ``max_backoff_s`` (each wait drawn between half
    and all of it); a ``Retry-After`` longer than ``max_retry_after_s`` is not waited for:
    the error is raised at once, carrying ``retry_after``.
    """

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0-based) when the service said nothing."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    def wait_after(self, attempt: int, status: int, retry_after: str | None) -> float | None:
        """Seconds to wait before sending again after an answer ``status``; None: do not."""
        if status not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        asked = retry_after_s(retry_after)
        if asked is None:
            return self.backoff(attempt)
        return asked if asked <= self.max_retry_after_s else None

    def wait_after_error(self, attempt: int, idempotent: bool) -> float | None:
        """Seconds to wait before sending again after a connection error; None: do not."""
        if not idempotent or attempt >= self.max_retries:
            return None
        return self.backoff(attempt)


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delay-seconds or an HTTP date); None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
