"""Start a Celery worker: ``python -m worker [fits|interactive|all]``.

``fits`` runs one fit at a time (its chains use all cores through nutpie's threads);
``interactive`` answers predictions and summaries, so they never wait behind a long fit,
and delivers webhooks (the ``HBM_NOTIFY_QUEUE``; one attempt holds it 10 s at most).
Fit workers run at a lower CPU priority (``HBM_FIT_WORKER_NICE``) than the API and the
interactive worker.
The Dockerfile, docker-compose.yml, ``make run`` and the tests all start workers this way.
"""

from __future__ import annotations

import os
import sys

from service.core.settings import get_settings


def argv(role: str) -> list[str]:
    """The celery command line for a worker of ``role``."""
    settings = get_settings()
    queues = {
        "fits": [settings.fit_queue],
        "interactive": [settings.interactive_queue, settings.notify_queue],
        "all": [settings.fit_queue, settings.interactive_queue, settings.notify_queue],
    }[role]
    return [
        *(["--quiet"] if settings.log_format == "json" else []),  # no banner: JSON lines only
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        "1",
        "--hostname",  # one per process: RabbitMQ's remote-control queue of a name is
        f"{role}-{os.getpid()}@%h",  # exclusive, so two workers on one host must differ
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def main() -> None:
    """Run the worker in this process."""
    role = sys.argv[1] if len(sys.argv) > 1 else "all"
    if role not in ("fits", "interactive", "all"):
        raise SystemExit(f"usage: python -m worker [fits|interactive|all] (got {role!r})")
    if role != "interactive":
        os.environ.setdefault("HBM_WARM_UP", "true")  # fits compile: warm the compiler
    if role == "fits":
        # Batch work below interactive work: an API request waits for no sampler thread.
        os.nice(get_settings().fit_worker_nice)
    from worker.celery_app import app

    app.worker_main(argv(role))


if __name__ == "__main__":
    main()
