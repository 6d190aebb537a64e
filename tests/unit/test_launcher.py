"""The launcher supervises its children: it restarts one that dies, gives up on one that
keeps crashing, stops them all on SIGTERM, and keeps the API on loopback unless told.

Real processes: a launcher process runs a ``Supervisor`` over tiny Python stand-ins that
write their pid to a file and sleep, so a test can kill them and watch what comes back.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from service.launcher import (
    api_notice,
    free_port,
    say_when_ready,
    service_children,
    wait_until_ready,
)
from tests.conftest import ROOT

#: Runs a Supervisor over the children and policy given as JSON in argv[1].
DRIVER = """
import json, sys
from service.launcher import Child, Supervisor
spec = json.loads(sys.argv[1])
children = [Child(name, argv) for name, argv in spec["children"]]
sys.exit(Supervisor(children, **spec["policy"]).run())
"""

#: A stand-in child: appends its pid to argv[1], optionally starts a grandchild, sleeps.
SLEEPER = """
import os, subprocess, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
if len(sys.argv) > 2:
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(sys.argv[2], "a") as f:
        f.write(f"{grandchild.pid}\\n")
time.sleep(60)
"""

#: A stand-in child that records its start and exits at once with code 3.
CRASHER = """
import os, sys
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
sys.exit(3)
"""

FAST = {"backoff_s": 0.05, "backoff_cap_s": 0.2, "stop_timeout_s": 5.0, "poll_s": 0.05}


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a launcher process over ``children`` (name -> argv) with a fast policy."""
    started: list[subprocess.Popen[str]] = []

    def start(children: dict[str, list[str]], **policy: float) -> subprocess.Popen[str]:
        spec = {"children": list(children.items()), "policy": {**FAST, **policy}}
        process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(spec)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def sleeper(*files: Path) -> list[str]:
    return [sys.executable, "-c", SLEEPER, *map(str, files)]


def test_a_killed_child_is_restarted_while_the_others_keep_running(
    launch: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    fits, api = tmp_path / "fits.pids", tmp_path / "api.pids"
    launcher = launch({"fit worker": sleeper(fits), "API": sleeper(api)})
    wait_until(lambda: len(pids(fits)) == 1 and len(pids(api)) == 1)
    first = pids(fits)[0]

    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(pids(fits)) == 2 and alive(pids(fits)[1]))

    assert not alive(first)
    assert len(pids(api)) == 1 and alive(pids(api)[0])
    assert launcher.poll() is None
    launcher.send_signal(signal.SIGTERM)
    _, log = launcher.communicate(timeout=10)
    assert "fit worker" in log and "was killed by SIGKILL" in log


def test_a_crashed_childs_leftover_processes_are_killed_before_it_restarts(
    launch: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """A Celery worker killed hard leaves its pool process; that must not linger."""
    worker, pool = tmp_path / "worker.pids", tmp_path / "pool.pids"
    launcher = launch({"fit worker": sleeper(worker, pool)})
    wait_until(lambda: len(pids(pool)) == 1)
    first_pool = pids(pool)[0]

    os.kill(pids(worker)[0], signal.SIGKILL)
    wait_until(lambda: len(pids(pool)) == 2)

    wait_until(lambda: not alive(first_pool))
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=10) == 0
    assert not any(alive(pid) for pid in pids(worker) + pids(pool))


def test_a_child_that_keeps_crashing_makes_the_launcher_give_up_with_a_non_zero_exit(
    launch: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    starts, api = tmp_path / "crasher.pids", tmp_path / "api.pids"
    crasher = [sys.executable, "-c", CRASHER, str(starts)]
    began = time.monotonic()
    launcher = launch({"fit worker": crasher, "API": sleeper(api)}, max_restarts=3)

    _, log = launcher.communicate(timeout=20)

    assert launcher.returncode == 1
    assert time.monotonic() - began < 15
    assert len(pids(starts)) == 1 + 3  # the first start and three restarts
    assert "fit worker" in log and "exited with code 3" in log and "giving up" in log
    assert not alive(pids(api)[0])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_every_child_and_the_launcher_exits_zero(
    launch: Callable[..., subprocess.Popen[str]], tmp_path: Path, stop: signal.Signals
) -> None:
    files = [tmp_path / f"{name}.pids" for name in ("redis", "fits", "interactive", "api")]
    launcher = launch({path.stem: sleeper(path) for path in files})
    wait_until(lambda: all(len(pids(path)) == 1 for path in files))

    launcher.send_signal(stop)

    assert launcher.wait(timeout=10) == 0
    assert not any(alive(pids(path)[0]) for path in files)
    assert all(len(pids(path)) == 1 for path in files)  # stopped, not restarted


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    launch: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    started = tmp_path / "stubborn.pids"
    stubborn = [
        sys.executable,
        "-c",
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + SLEEPER,
        str(started),
    ]
    launcher = launch({"stubborn": stubborn}, stop_timeout_s=0.5)
    wait_until(lambda: len(pids(started)) == 1)

    launcher.send_signal(signal.SIGTERM)

    assert launcher.wait(timeout=10) == 0
    assert not alive(pids(started)[0])


def test_the_api_listens_on_loopback_unless_host_is_set() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "PORT": "8123"}

    by_name = {child.name: child for child in service_children(env)}

    assert by_name["API"].env is not None and by_name["API"].env["HOST"] == "127.0.0.1"
    assert "HOST" not in (by_name["fit worker"].env or {})
    notice = api_notice(by_name["API"].env)
    assert "http://127.0.0.1:8123" in notice
    assert "HOST=0.0.0.0 make run" in notice and "HBM_API_KEY_HASHES" in notice
    # the port the settings read: HBM_PORT before PORT (it said 8000 when HBM_PORT was set)
    assert "http://127.0.0.1:8124" in api_notice({"HOST": "127.0.0.1", "HBM_PORT": "8124"})


def test_a_host_set_in_the_environment_is_kept_for_the_api() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "HOST": "0.0.0.0"}

    api = service_children(env)[-1]

    assert api.env is not None and api.env["HOST"] == "0.0.0.0"
    assert "no API key asked" in api_notice(api.env)


def test_hbm_host_counts_as_the_settings_read_it() -> None:
    """The settings prefer HBM_HOST to HOST: the launcher neither binds the API elsewhere
    nor says another address than the API listens on."""
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "HBM_HOST": "0.0.0.0", "HBM_PORT": "8125"}

    api = service_children(env)[-1]

    assert api.env is not None and "HOST" not in api.env
    assert "http://0.0.0.0:8125" in api_notice(api.env)


class Readiness(http.server.BaseHTTPRequestHandler):
    """``/v1/readyz`` answering 503 (workers still warming up) ``not_ready`` times, then 200."""

    not_ready: ClassVar[int] = 0
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        ready = len(self.asked) > self.not_ready
        self.send_response(200 if ready else 503)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def readiness() -> Iterator[tuple[str, type[Readiness]]]:
    """A local server standing in for the API, and its handler class (to set and read)."""
    handler = type("Handler", (Readiness,), {"asked": [], "not_ready": 2})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_the_launcher_waits_until_readyz_answers_200_then_says_ready_with_the_url(
    readiness: tuple[str, type[Readiness]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, handler = readiness

    say_when_ready(url, timeout_s=30, poll_s=0.05).join(timeout=30)

    assert handler.asked == ["/v1/readyz"] * 3  # 503, 503, then 200
    said = capsys.readouterr().err
    assert f"launcher: ready: the API answers on {url} (docs: {url}/docs)" in said


def test_the_launcher_says_when_the_service_did_not_get_ready_in_time(
    readiness: tuple[str, type[Readiness]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, handler = readiness
    handler.not_ready = 10**6

    assert wait_until_ready(url, timeout_s=0.3, poll_s=0.05) is False
    say_when_ready(url, timeout_s=0.2, poll_s=0.05).join(timeout=30)

    assert len(handler.asked) >= 2
    assert f"not ready after 0 s: see {url}/v1/readyz" in capsys.readouterr().err


def test_readiness_is_waited_for_while_nothing_listens_yet() -> None:
    assert wait_until_ready(f"http://127.0.0.1:{free_port()}", timeout_s=0.2, poll_s=0.05) is False
