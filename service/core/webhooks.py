"""Webhooks: which URLs a fit may notify, which addresses may be reached, how a notification
is signed and when it is tried again. Both sides apply these rules: the API when a fit is
submitted (a 422 naming ``notify_url``), the worker (``worker.notify``) before every attempt.
Nothing here sends anything.

**Never a request forgery.** A ``notify_url`` is refused unless it is an absolute ``http`` or
``https`` URL of at most ``MAX_URL_LENGTH`` printable ASCII characters, with no credentials
and no fragment, whose host is listed in ``HBM_WEBHOOK_ALLOWED_HOSTS`` (an entry
``*.example.org`` allows that domain's subdomains; empty: webhooks are off). A host name
must be a DNS name, not a number in disguise (``0x7f000001``, ``2130706433``, ``127.1``
reach 127.0.0.1 through the C resolver). An address is refused when it is unspecified,
loopback, link-local, multicast, private, reserved, site-local or otherwise not public
(100.64.0.0/10...), and so is an IPv6 address that carries such an IPv4 address (mapped
``::ffff:a.b.c.d``, 6to4 ``2002::/16``, Teredo, NAT64 ``64:ff9b::/96``), unless
``HBM_WEBHOOK_ALLOW_PRIVATE`` is true (tests, private networks; the host list still holds).
An IP literal is checked at submission; a name is resolved once at each attempt, refused
if any of its addresses is, and the connection is made to the address that was checked
(see ``worker.notify``), so a name that changes its answer between check and connection
(DNS rebinding) cannot redirect the request. Redirects are never followed.

**Signatures.** Each API key has its own signing secret, ``HMAC-SHA256(HBM_WEBHOOK_SECRET,
"hbm-webhook:" + owner)`` (``owner``: the key's SHA-256 digest; empty without keys), shown
to its owner by ``GET /v1/webhooks/secret``. A notification carries ``X-Hbm-Timestamp``
(Unix seconds) and ``X-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." +
body)>``: the timestamp is signed with the body, so a receiver that refuses timestamps
older than a few minutes (``verify``: 300 s) and remembers ``X-Hbm-Delivery`` ids is safe
from replays. Retries of one notification share its delivery id and carry new timestamps.

**Retries.** A 2xx ends a notification (``delivered``); a 408, a 429, a 5xx or a network
failure is tried again after ``backoff_s`` (``HBM_WEBHOOK_BACKOFF_S`` doubling, capped at
``HBM_WEBHOOK_BACKOFF_CAP_S``), up to ``HBM_WEBHOOK_MAX_ATTEMPTS`` attempts (then
``failed``); any other answer, a redirect included, is final (``failed``); a refused target
is never contacted (``refused``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from service.core.schemas import FitStatus

if TYPE_CHECKING:
    from service.core.jobs import JobStore
    from service.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The Celery task that makes one attempt at a notification: ``(fit_id, attempt)``.
NOTIFY_TASK = "hbm.notify"
#: Longest ``notify_url``.
MAX_URL_LENGTH = 2048
#: A notification whose next attempt is this late (its message was lost with a worker, or
#: the process that ended the fit died before sending it) is sent again by the reconciler.
REDELIVER_AFTER_S = 60.0
#: How old a signed timestamp ``verify`` accepts.
TOLERANCE_S = 300
#: The signed content, for ``GET /v1/webhooks/secret``.
SIGNED_CONTENT = 'X-Hbm-Timestamp + "." + body'

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC = re.compile(r"0x[0-9a-f]*|[0-9]+")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RefusedTarget(ValueError):
    """A notify_url, or an address its host resolves to, that may not be contacted."""


@dataclass(frozen=True)
class Target:
    """A checked notify_url, split for a connection to a pinned address."""

    scheme: str
    host: str  # lowercase, without brackets; an IP literal in its compressed form
    port: int
    host_header: str  # the URL's host and port as written, for the Host header
    path: str  # path and query, as written ("/" when empty)

    @property
    def literal(self) -> IPAddress | None:
        """The host as an address, when the URL names one."""
        return _ip(self.host)

    def url_for(self, address: IPAddress) -> str:
        """The URL with its host replaced by ``address`` (the connection is pinned to it)."""
        host = f"[{address.compressed}]" if address.version == 6 else address.compressed
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def webhooks_enabled(settings: Settings) -> bool:
    """Whether any host may be notified."""
    return bool(settings.webhook_allowed_hosts)


def check_url(url: str, settings: Settings) -> Target:
    """The target of ``url`` if every rule that needs no DNS lookup allows it (an IP
    literal's address included); ``RefusedTarget`` saying why otherwise."""
    if not webhooks_enabled(settings):
        raise RefusedTarget("webhooks are off on this service (no host is allowed)")
    if len(url) > MAX_URL_LENGTH:
        raise RefusedTarget(f"is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
        raise RefusedTarget("must be printable ASCII without spaces or backslashes")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RefusedTarget("must be an absolute http or https URL")
    if "@" in parts.netloc:
        raise RefusedTarget("must not carry credentials")
    if parts.fragment or url.endswith("#"):
        raise RefusedTarget("must not have a fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise RefusedTarget("has an invalid port") from exc
    host = _normal_host(parts.hostname or "")
    if not host or port == 0:
        raise RefusedTarget("must name a host (and a port above 0)")
    address = _ip(host)
    if address is None:
        _check_name(host)
    if not host_allowed(host, settings.webhook_allowed_hosts):
        raise RefusedTarget("names a host that is not allowed (HBM_WEBHOOK_ALLOWED_HOSTS)")
    if address is not None:
        check_address(address, allow_private=settings.webhook_allow_private)
    netloc = parts.netloc
    path = parts.path or "/"
    return Target(
        scheme=parts.scheme,
        host=address.compressed if address is not None else host,
        port=port or (443 if parts.scheme == "https" else 80),
        host_header=netloc,
        path=f"{path}?{parts.query}" if parts.query else path,
    )


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether ``host`` is listed, or is a subdomain of a listed ``*.domain``."""
    host = _canonical(_normal_host(host))
    for entry in allowed:
        entry = _normal_host(entry)
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == _canonical(entry):
            return True
    return False


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be contacted (its class), or None for a public address. An
    IPv4-mapped or NAT64 address is the IPv4 address it translates to, and is judged as it;
    a 6to4 or Teredo address is judged as itself and as the IPv4 addresses it carries."""
    for candidate in _judged(address):
        for name, applies in _CLASSES:
            if applies(candidate):
                return name
        if not candidate.is_global:
            return "not public"
    return None


def check_address(address: IPAddress, *, allow_private: bool) -> None:
    """``RefusedTarget`` for an address that may not be contacted."""
    refusal = None if allow_private else address_refusal(address)
    if refusal is not None:
        raise RefusedTarget(
            f"reaches a {refusal} address, which is refused (HBM_WEBHOOK_ALLOW_PRIVATE)"
        )


# ----------------------------------------------------------------------------- signing


def signing_secret(master: str, owner: str) -> str:
    """The signing secret of the key whose digest is ``owner`` (empty: no keys)."""
    return hmac.new(master.encode(), f"hbm-webhook:{owner}".encode(), hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Signature`` header of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    if not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def delivery_id(fit_id: str, status: FitStatus) -> str:
    """The ``X-Hbm-Delivery`` id of a fit's notification (the same for each retry)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"hbm:{fit_id}:{status.value}").hex


def event_name(status: FitStatus) -> str:
    """The ``X-Hbm-Event`` of a final status: ``fit.succeeded``, ``fit.failed``..."""
    return f"fit.{status.value}"


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2...)."""
    return float(min(cap_s, base_s * 2 ** min(attempt - 1, 30)))


def enqueue_first(
    store: JobStore, send: Callable[[str, int], None], fit_id: str, status: FitStatus
) -> bool:
    """Send the first attempt of the notification of ``fit_id``'s final ``status``, once:
    whoever makes a fit final calls this, and only the first call for the fit and status
    sends (a fit without ``notify_url`` sends nothing). Whether this call sent it."""
    if not store.claim_notification(fit_id, status):
        return False
    send(fit_id, 1)
    return True


# ----------------------------------------------------------------------------- helpers

_CLASSES: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("unspecified", lambda a: a.is_unspecified),
    ("loopback", lambda a: a.is_loopback),
    ("link-local", lambda a: a.is_link_local),
    ("multicast", lambda a: a.is_multicast),
    ("reserved", lambda a: a.is_reserved),
    ("private", lambda a: a.is_private),
    ("site-local", lambda a: isinstance(a, ipaddress.IPv6Address) and a.is_site_local),
)


def _judged(address: IPAddress) -> list[IPAddress]:
    """The addresses traffic to ``address`` reaches: itself, or the IPv4 addresses an IPv6
    address translates to or carries."""
    if not isinstance(address, ipaddress.IPv6Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    carried = [address.sixtofour, *(address.teredo or ())]
    return [address, *(a for a in carried if a is not None)]


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]").removesuffix(".")


def _canonical(host: str) -> str:
    address = _ip(host)
    return address.compressed if address is not None else host


def _check_name(host: str) -> None:
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise RefusedTarget("names a host that is neither a DNS name nor an IP address")
    if _NUMERIC.fullmatch(labels[-1]):
        raise RefusedTarget("names a host that reads as a number; write the IP address")
