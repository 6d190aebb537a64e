"""A webhook receiver for tests: a tiny HTTP server on 127.0.0.1, in a thread, that records
every request and answers each path from a script (``answer``: the statuses to give in
order, the last one repeated; 200 when none was set)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """Records requests; answers ``POST path`` with its scripted statuses. A 3xx answer
    points its ``Location`` at ``/redirected``; ``hang(path)`` makes a path never answer."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._scripts: dict[str, list[int]] = {}
        self._hanging: set[str] = set()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://{host}:{self.port}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        """Answer ``path`` with ``statuses`` in order, then the last one again and again."""
        with self._lock:
            self._scripts[path] = list(statuses)

    def hang(self, path: str) -> None:
        """Never answer ``path`` (until the receiver closes)."""
        self._hanging.add(path)

    def received(self, path: str) -> list[Received]:
        """The requests made to ``path``, in order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 120) -> list[Received]:
        """Until ``path`` has received ``count`` requests; those requests."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.received(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{path} received {len(self.received(path))} of {count} requests")

    def close(self) -> None:
        """Stop serving (hanging requests are let go)."""
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _next_status(self, path: str) -> int:
        with self._lock:
            script = self._scripts.get(path, [200])
            return script.pop(0) if len(script) > 1 else script[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(Received("POST", self.path, headers, body))
                if self.path in receiver._hanging:
                    receiver._released.wait(60)
                    return
                status = receiver._next_status(self.path)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
