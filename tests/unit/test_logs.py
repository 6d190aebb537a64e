"""Log lines say what they are about: with ``HBM_LOG_FORMAT=json`` each is one JSON object
with its time, level, logger, message, request id, fit id and exception; every API request
has an id (the client's ``X-Request-ID`` when safe, else a fresh one), returned to the
client, on the request's log lines, stored with the fit it creates and sent with the tasks
it queues. Redis is real; Celery publishes for real (no worker consumes here)."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from service.api.app import create_app
from service.core import logs
from service.core.settings import Settings
from tests.conftest import ROOT, clean_redis, redis_url
from tests.unit.test_api import app_client, body

FIT_ID = "0123456789abcdef0123456789abcdef"
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What the ``service`` and ``worker`` loggers write, as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    loggers = [logging.getLogger(name) for name in ("service", "worker", "tests")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield stream
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_names_its_time_level_logger_request_fit_and_exception(
    lines: io.StringIO,
) -> None:
    token = logs.set_request_id("abc-123")
    try:
        with logs.working_on(FIT_ID):
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("worker.fitting").exception("fit %s failed", "x")
    finally:
        logs.reset_request_id(token)

    (line,) = parsed(lines)
    assert line["level"] == "ERROR" and line["logger"] == "worker.fitting"
    assert line["message"] == "fit x failed"
    assert line["request_id"] == "abc-123" and line["fit_id"] == FIT_ID
    assert "ValueError: boom" in line["exception"] and "Traceback" in line["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


def test_a_message_with_line_breaks_stays_one_line_and_names_nothing_outside_a_request(
    lines: io.StringIO,
) -> None:
    logging.getLogger("service.api").warning('first\nsecond "quoted"')

    assert len(lines.getvalue().splitlines()) == 1
    (line,) = parsed(lines)
    assert line["message"] == 'first\nsecond "quoted"'
    assert line["request_id"] is None and line["fit_id"] is None and "exception" not in line


def test_every_thread_of_a_worker_process_names_the_fit_it_works_on_until_it_ends(
    lines: io.StringIO,
) -> None:
    def heartbeat() -> None:
        logging.getLogger("worker.heartbeat").info("beat")

    with logs.working_on(FIT_ID, "req-7"):
        thread = threading.Thread(target=heartbeat)
        thread.start()
        thread.join()
    logging.getLogger("worker.tasks").info("between tasks")

    beat, between = parsed(lines)
    assert (beat["fit_id"], beat["request_id"]) == (FIT_ID, "req-7")
    assert (between["fit_id"], between["request_id"]) == (None, None)


def test_json_logging_covers_the_servers_loggers_and_warnings_and_text_changes_nothing() -> None:
    script = """
import logging, warnings
from service.core import logs
assert logs.configure("text") is False and not logging.getLogger().handlers
assert logs.configure("json", "info") is True
logging.getLogger("uvicorn.error").info("Started server process")
logging.getLogger("celery.app.trace").info("Task hbm.fit succeeded")
warnings.warn("careful")
print("done")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert done.stdout == "done\n"
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["logger"] for r in records] == ["uvicorn.error", "celery.app.trace", "py.warnings"]
    assert "careful" in records[2]["message"]


# ------------------------------------------------------------------- the request id


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(tmp_path) as test_client:
        yield test_client


def test_a_safe_request_id_is_returned_as_sent(client: TestClient) -> None:
    for request_id in ("abc-123", "a.b:c_d", "x" * 128):
        answer = client.get("/v1/healthz", headers={"X-Request-ID": request_id})
        assert answer.headers["x-request-id"] == request_id


def test_an_unsafe_or_missing_request_id_is_replaced_by_a_fresh_one(client: TestClient) -> None:
    seen = set()
    for headers in ({}, {"X-Request-ID": ""}, {"X-Request-ID": "x" * 129},
                    {"X-Request-ID": "a b"}, {"X-Request-ID": "a\\u001b[31m"},
                    {"X-Request-ID": "<script>"}):  # fmt: skip
        request_id = client.get("/v1/healthz", headers=headers).headers["x-request-id"]
        assert GENERATED.fullmatch(request_id), headers
        seen.add(request_id)
    assert len(seen) == 6


def test_answers_refused_early_and_errors_carry_the_request_id_too(client: TestClient) -> None:
    missing = client.get(f"/v1/fits/{FIT_ID}", headers={"X-Request-ID": "r-404"})
    unrouted = client.get("/nowhere", headers={"X-Request-ID": "r-unrouted"})

    assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-404"
    assert unrouted.status_code == 404 and unrouted.headers["x-request-id"] == "r-unrouted"


def test_the_api_s_log_lines_during_a_request_carry_its_id(
    tmp_path: Path, lines: io.StringIO
) -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path))
    with TestClient(app) as down:
        answer = down.get("/v1/fits", headers={"X-Request-ID": "req-42"})

    assert answer.status_code == 503
    (line,) = [line for line in parsed(lines) if line["logger"] == "service.api.problems"]
    assert line["request_id"] == "req-42" and "redis unavailable" in line["message"]


def test_a_fit_keeps_the_id_of_the_request_that_created_it(client: TestClient) -> None:
    created = client.post("/v1/fits", json=body(), headers={"X-Request-ID": "abc-123"})

    assert created.json()["request_id"] == "abc-123"
    assert client.get(created.headers["location"]).json()["request_id"] == "abc-123"


def test_the_tasks_a_request_queues_carry_its_id_in_their_headers(tmp_path: Path) -> None:
    url = redis_url(14)
    clean_redis(url)
    app = create_app(Settings(redis_url=url, data_dir=tmp_path))  # the real Celery producer
    with TestClient(app) as real:
        created = real.post("/v1/fits", json=body(), headers={"X-Request-ID": "abc-123"})
    assert created.status_code == 202

    (message,) = Redis.from_url(url).lrange("hbm.fits", 0, -1)
    headers = json.loads(message)["headers"]
    assert headers["hbm_request_id"] == "abc-123"
    assert created.json()["id"] in headers["argsrepr"]
