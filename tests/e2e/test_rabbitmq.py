"""RabbitMQ as the broker (``HBM_BROKER_URL=amqp://...``): the reliability scenarios of
``test_reliability`` and ``test_faults`` run again, unchanged, on a deployment whose broker
is RabbitMQ (job records and replies stay in Redis), and what the service reads from the
broker (queue depths, which fits have a message) is checked against a real RabbitMQ.

The tests use ``TEST_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672//``), each
run in a vhost of its own (made with ``rabbitmqctl`` when the server is local and the tool
answers, else the URL's vhost with the service's queues purged first). When no RabbitMQ
answers they are skipped, with the reason; under CI (``CI`` set) they fail instead:
``.ci/run`` starts a RabbitMQ.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
from kombu import Connection

from service.api.dispatch import Dispatcher
from service.api.reconciler import reconcile_once
from service.core.artifacts import Artifacts
from service.core.broker import (
    CONSUMER_TIMEOUT_SINCE,
    delivery_timeout_s,
    fits_in_broker,
    queue_depths,
    server_version,
    shown,
)
from service.core.jobs import JobStore, new_fit_id
from service.core.settings import Settings
from tests.conftest import clean_redis, redis_url
from tests.e2e.conftest import Deployment, deployed
from tests.e2e.test_faults import (
    test_a_call_whose_worker_is_killed_is_answered_by_its_replacement,
    test_a_time_limit_holds_while_compiling,
)
from tests.e2e.test_reliability import (
    test_a_cancelled_queued_fit_never_starts,
    test_a_fit_past_its_time_limit_fails_with_timeout_and_is_not_retried,
    test_a_killed_pool_process_is_retried_and_the_fit_succeeds,
    test_a_second_delivery_of_a_running_fit_does_not_start_a_second_run,
    test_a_whole_worker_killed_is_replaced_and_its_fit_picked_up_quickly,
    test_cancelling_a_running_fit_stops_sampling_and_the_worker_lives_on,
)
from tests.unit.test_reconciler import spec

#: The scenarios run here as they are, on the RabbitMQ deployment below.
__all__ = [
    "test_a_call_whose_worker_is_killed_is_answered_by_its_replacement",
    "test_a_cancelled_queued_fit_never_starts",
    "test_a_fit_past_its_time_limit_fails_with_timeout_and_is_not_retried",
    "test_a_killed_pool_process_is_retried_and_the_fit_succeeds",
    "test_a_second_delivery_of_a_running_fit_does_not_start_a_second_run",
    "test_a_time_limit_holds_while_compiling",
    "test_a_whole_worker_killed_is_replaced_and_its_fit_picked_up_quickly",
    "test_cancelling_a_running_fit_stops_sampling_and_the_worker_lives_on",
]

pytestmark = pytest.mark.e2e

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672//"
#: The service's queues (``Settings``' defaults).
QUEUES = ("hbm.fits", "hbm.interactive", "hbm.notify")
#: Redis database of the deployment's job records (emptied first).
DB = 11


def answers(url: str) -> bool:
    """Whether a RabbitMQ answers at ``url`` (and lets its user in)."""
    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.connect()
        return True
    except Exception:
        return False


def with_vhost(url: str, vhost: str) -> str:
    """``url`` naming another vhost."""
    return urlsplit(url)._replace(path="/" + quote(vhost, safe="")).geturl()


def rabbitmqctl(*args: str) -> bool:
    """Run ``rabbitmqctl args``; whether it succeeded."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return False
    try:
        done = subprocess.run([tool, "-q", *args], capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def purge(url: str) -> None:
    """Empty the service's queues on ``url``'s vhost (those that exist)."""
    with Connection(url, connect_timeout=3) as connection:
        channel = connection.channel()
        for name in QUEUES:
            try:
                channel.queue_purge(name)
            except connection.channel_errors:  # no such queue
                channel = connection.channel()


@pytest.fixture(scope="module")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ vhost of this run's own, deleted at the end (or the URL's own vhost,
    its queues purged, when no vhost can be made)."""
    base = os.environ.get("TEST_AMQP_URL", DEFAULT_AMQP)
    if not answers(base):
        why = f"no RabbitMQ answers at {shown(base)} (set TEST_AMQP_URL, or start one)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the RabbitMQ tests (.ci/run starts one)")
        pytest.skip(why)
    parts = urlsplit(base)
    vhost = f"hbm-test-{uuid.uuid4().hex[:12]}"
    user = unquote(parts.username or "guest")
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if local and rabbitmqctl("add_vhost", vhost):
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        url = with_vhost(base, vhost)
        try:
            assert answers(url), f"the new vhost {vhost} does not let {user} in"
            yield url
        finally:
            rabbitmqctl("delete_vhost", vhost)
        return
    purge(base)
    yield base


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Deployment]:
    """The API and both workers with RabbitMQ as their broker (``client`` uses it too)."""
    yield from deployed(tmp_path_factory, DB, HBM_BROKER_URL=amqp_url)


def test_a_worker_on_a_rabbitmq_that_ignores_consumer_timeouts_says_what_to_set(
    deployment: Deployment, amqp_url: str
) -> None:
    """Before 3.11.15 RabbitMQ ignores the workers' x-consumer-timeout and closes the
    channel of a fit that runs past its own consumer_timeout (30 minutes by default)."""
    with Connection(amqp_url, connect_timeout=3) as connection:
        connection.connect()
        version = server_version(connection)
    assert version is not None
    setting = f"consumer_timeout = {delivery_timeout_s(Settings()) * 1000}"
    warned = setting in deployment.log_tail("worker-fits", chars=10**6)
    assert warned == (version < CONSUMER_TIMEOUT_SINCE), version


def test_readiness_on_rabbitmq_includes_the_broker(deployment: Deployment) -> None:
    with deployment.client() as client:
        ready = client.get("/v1/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["broker"] == "ok"


def test_on_rabbitmq_queue_depths_are_its_message_counts(amqp_url: str) -> None:
    queue = f"hbm.test-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url(14), broker_url=amqp_url, fit_queue=queue)
    dispatcher = Dispatcher(settings, JobStore(clean_redis(redis_url(14))))
    try:
        assert queue_depths(settings, queues=[queue, "hbm.never-declared"]) == {
            queue: 0,
            "hbm.never-declared": 0,
        }
        for _ in range(3):
            dispatcher.enqueue_fit(new_fit_id())
        assert queue_depths(settings)[queue] == 3
    finally:
        delete_queue(amqp_url, queue)


def test_on_rabbitmq_a_lost_fit_message_is_sent_again_once_the_queue_is_empty(
    amqp_url: str, tmp_path: Path
) -> None:
    """RabbitMQ's queue cannot be read without consuming it: while it holds a message, a
    queued fit's may be among them; once it holds none, every queued fit that no run holds
    lost its message and is sent again."""
    queue = f"hbm.test-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url(14), broker_url=amqp_url, fit_queue=queue)
    store = JobStore(clean_redis(redis_url(14)))
    dispatcher = Dispatcher(settings, store)
    waiting, lost = new_fit_id(), new_fit_id()
    for fit_id in (waiting, lost):
        store.create(fit_id, spec())
    dispatcher.enqueue_fit(waiting)

    def reconcile() -> list[str]:
        outcome = reconcile_once(
            store,
            Artifacts(tmp_path),
            dispatcher.enqueue_fit,
            queue=queue,
            retention_s=3600,
            broker=partial(fits_in_broker, settings, store.redis),
            now=time.time() + 60,
        )
        return outcome.resent

    try:
        assert reconcile() == []  # a message waits: it may be any queued fit's
        purge_queue(amqp_url, queue)  # as if a worker had taken it, and RabbitMQ lost lost's
        assert sorted(reconcile()) == sorted([waiting, lost])
        assert queue_depths(settings)[queue] == 2
        assert reconcile() == []
    finally:
        delete_queue(amqp_url, queue)


def purge_queue(url: str, queue: str) -> None:
    with Connection(url, connect_timeout=3) as connection:
        connection.channel().queue_purge(queue)


def delete_queue(url: str, queue: str) -> None:
    with Connection(url, connect_timeout=3) as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
