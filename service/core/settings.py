"""The one settings object, read from environment variables (prefix ``HBM_``; ``REDIS_URL``,
``HOST``, ``PORT`` and ``LOG_LEVEL`` are also read without it).

``python -m service.core.settings`` prints every setting with its default and meaning as a
Markdown table: ``docs/operations.md`` holds that table, and a test keeps the two equal.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every tunable of the service. Environment variables override the defaults."""

    model_config = SettingsConfigDict(env_prefix="HBM_", extra="ignore", hide_input_in_errors=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("HBM_REDIS_URL", "REDIS_URL"),
        description="Redis holding job records, call replies and (unless HBM_BROKER_URL "
        "names another broker) the Celery queues.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery's broker. None or empty: the Redis at REDIS_URL. "
        "amqp://user:password@host:5672/vhost: RabbitMQ (acknowledgements instead of a "
        "visibility timeout; see docs/operations.md#rabbitmq). Job records and replies stay "
        "in Redis.",
    )
    host: str = Field(
        default="0.0.0.0",
        validation_alias=AliasChoices("HBM_HOST", "HOST"),
        description="Interface the API listens on (make run: 127.0.0.1 unless set).",
    )
    port: int = Field(
        default=8000,
        validation_alias=AliasChoices("HBM_PORT", "PORT"),
        description="Port the API listens on.",
    )
    log_level: str = Field(
        default="info",
        validation_alias=AliasChoices("HBM_LOG_LEVEL", "LOG_LEVEL"),
        description="The API server's log level (debug, info, warning, error).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines of the API and the workers: text (each server's own) or json "
        "(one object a line: time, level, logger, message, request_id, fit_id, exception).",
    )
    api_workers: int = Field(
        default=1,
        ge=1,
        description="API processes (uvicorn workers) behind the one port: more processes use "
        "more cores (compose runs 2).",
    )
    data_dir: Path = Field(
        default=Path("var/data"),
        description="Where requests and posteriors are stored, unless storage_url names "
        "an object store.",
    )
    storage_url: str = Field(
        default="",
        pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?)?$",
        description="s3://bucket/prefix: every fit file in an S3-compatible bucket (AWS S3, "
        "MinIO, Ceph), shared by API and workers on any host; empty: the local data_dir.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="The object store's endpoint (MinIO, Ceph); none: AWS."
    )
    s3_access_key_id: str | None = Field(default=None, description="Object store key id.")
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="Object store secret key."
    )
    s3_region: str | None = Field(default=None, description="Object store region.")
    fit_queue: str = Field(default="hbm.fits", description="Broker queue of fits.")
    interactive_queue: str = Field(
        default="hbm.interactive",
        description="Broker queue of predictions, results at other intervals and dry runs.",
    )

    # Request limits (each has its own clear 4xx answer).
    max_rows: int = Field(default=200_000, description="Rows a fit's data may have.")
    max_columns: int = Field(default=100, description="Columns a request's data may have.")
    max_cells: int = Field(
        default=4_000_000,
        description="Largest data: rows x columns as sent (bounds the memory a request takes "
        "while it is parsed, about 40-60 bytes a cell).",
    )
    max_text_chars: int = Field(
        default=1000, lt=131_072, description="Longest text value in the data."
    )
    max_formula_length: int = Field(default=500, description="Characters a formula may have.")
    max_draws: int = Field(default=20_000, description="Kept draws per chain.")
    max_tune: int = Field(default=20_000, description="Warm-up draws per chain.")
    max_chains: int = Field(default=16, description="Chains of a fit.")
    max_prediction_rows: int = Field(default=100_000, description="Rows of one prediction.")
    max_group_factors: int = Field(default=10, description="Grouping factors of a model.")
    max_levels_per_factor: int = Field(default=20_000, description="Levels of a factor.")
    max_draws_x_chains: int = Field(default=40_000, description="Draws x chains of a fit.")
    max_design_bytes: int = Field(
        default=2 * 1024**3,
        description="Largest dense design: rows x (common + group-level columns) x 8 bytes, "
        "each categorical counted with one column per level.",
    )
    max_levels_per_categorical: int = Field(
        default=500,
        description="Most levels of a categorical in a term's expression (text or boolean "
        "columns, columns declared categorical, C(...)): each level is a coefficient of its own "
        "and a dense design column (measured: a 1,000-level common term on 20,000 rows took "
        "1.3 GB and 22 s to compile; 6,000 levels 2.9 GB and 120 s+). A factor with more "
        "levels fits as a group term, (1 | s), whose indicators are sparse.",
    )
    max_prediction_cells: int = Field(
        default=100_000_000,
        description="Most predicted values per request: rows x posterior draws (all chains). "
        "Time grows with it (measured for y ~ x + (1 | g): 1e8 took 9 s for means and 17 s "
        "for new responses), so the default keeps one request well inside reply_timeout_s "
        "for larger models too: 25,000 rows at 4 chains x 1,000 draws.",
    )
    max_export_values: int = Field(
        default=100_000_000,
        ge=1,
        description="Most values in one draws export (GET /v1/fits/{id}/draws): chains x kept "
        "draws x (parameters' scalars + sampler statistics), counted by the worker before it "
        "writes. The slowest format, long CSV, is written at about 2 million values a second "
        "(about 38 bytes each): the default keeps an export inside reply_timeout_s.",
    )

    # Sampler defaults (what rstanarm users expect: 4 chains, 1000 draws, 1000 tuning).
    default_draws: int = Field(default=1000, description="Draws per chain when not asked.")
    default_tune: int = Field(default=1000, description="Warm-up draws when not asked.")
    default_chains: int = Field(default=4, description="Chains when not asked.")
    sampler_cores: int | None = Field(
        default=None, description="Chains run in parallel threads; default: all cores."
    )
    fit_worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness added to fit workers: on a host they share with the API and "
        "the interactive worker, sampling yields the CPU to requests (0: same priority).",
    )

    # Reliability.
    fit_time_limit_s: int = Field(default=3600, description="Default time limit of a fit.")
    max_fit_time_limit_s: int = Field(default=6 * 3600, description="Largest time limit.")
    lock_ttl_s: int = Field(
        default=30, description="A running fit whose heartbeat is this old has lost its worker."
    )
    reconcile_interval_s: float = Field(
        default=10.0, description="How often lost or orphaned fits are re-queued."
    )
    max_fit_rss_mb: int = Field(
        default=8192, description="A fit whose worker process grows past this fails clearly."
    )
    worker_recycle_rss_mb: int = Field(
        default=1024, description="A pool process above this after a task is replaced."
    )
    tasks_per_child: int = Field(
        default=200,
        description="Tasks a pool process runs before it is replaced (a fresh one forks "
        "from the warmed parent in an instant, but starts with no compiled models).",
    )
    retention_s: int = Field(
        default=7 * 24 * 3600, description="How long finished fits and their files are kept."
    )
    max_attempts: int = Field(default=3, description="Runs of a fit before it is failed.")
    lock_grace_s: float = Field(
        default=5.0,
        description="A running fit is re-queued only after its lock has been missing this "
        "long: a live run whose lock lapsed in a Redis outage takes it back first.",
    )
    reply_timeout_s: float = Field(
        default=120.0, description="How long the API waits for a prediction or a summary."
    )
    redis_timeout_s: float = Field(
        default=2.0,
        description="Socket timeout of the API's and the workers' job-store calls: a hung "
        "Redis costs a request this long, then a 503 with Retry-After.",
    )
    worker_presence_ttl_s: float = Field(
        default=10.0,
        description="A worker announces itself every third of this; one silent this long is "
        "taken for dead (calls to a queue with no live worker get 503 at once).",
    )
    max_calls_in_flight: int = Field(
        default=32,
        ge=1,
        description="Calls waiting on a worker (predictions, summaries at other intervals, "
        "dry runs) per API process; beyond it 503 with Retry-After.",
    )
    max_calls_in_flight_per_key: int = Field(
        default=8, ge=1, description="The same, per API key and API process (429 beyond)."
    )
    calls_per_minute: int = Field(
        default=300, description="Calls that need a worker one key may make per minute."
    )
    header_timeout_s: float = Field(
        default=10.0, description="A request's headers must arrive within this (else 408)."
    )
    body_timeout_s: float = Field(
        default=60.0,
        description="A request's body must arrive within this, and no chunk may take more "
        "than a sixth of it (else 408).",
    )
    max_bodies_in_flight_bytes: int = Field(
        default=256 * 1024**2,
        description="Request bodies one API process holds at once; beyond it 503.",
    )
    model_cache_size: int = Field(default=8, description="Fitted models kept warm per worker.")
    compiled_cache_size: int = Field(
        default=32, description="Compiled model structures kept per fit worker process."
    )
    warm_up: bool = Field(
        default=False,
        description="Compile a tiny model at worker start (set by 'python -m worker fits').",
    )

    # Live event streams (GET /v1/fits/{id}/events).
    events_heartbeat_s: float = Field(
        default=15.0, gt=0, description="Seconds between heartbeats (SSE comments) of a stream."
    )
    events_max_s: float = Field(
        default=3600.0,
        gt=0,
        description="A stream closes after this long (a browser's EventSource reconnects).",
    )
    max_streams_per_key: int = Field(
        default=10, ge=1, description="Event streams one key may hold open per API process (429)."
    )

    # Operations.
    metrics_enabled: bool = Field(
        default=True, description="Serve GET /metrics (Prometheus text format)."
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set (not empty), GET /metrics needs 'Authorization: Bearer <token>' "
        "(401 otherwise). Set it when the API is reachable from outside.",
    )

    # Security.
    api_key_hashes: list[str] = Field(
        default_factory=list,
        description="SHA-256 hex digests of the accepted API keys (JSON list). Empty: no keys "
        "are asked for (local use).",
    )
    submissions_per_minute: int = Field(default=120, description="Fits one key may submit.")
    max_active_fits_per_key: int = Field(
        default=500, description="Queued or running fits one key may have at once."
    )
    max_body_bytes: int = Field(default=64 * 1024**2, description="Largest request body.")
    cors_origins: list[str] = Field(default_factory=list, description="Empty: CORS off.")

    # Webhooks (a fit's notify_url; see service.core.webhooks and docs/operations.md).
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts a fit's notify_url may name (JSON list or comma-separated; "
        "'*.example.org' allows its subdomains). Empty: webhooks are off (a notify_url is a "
        "422).",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let notifications reach loopback, private, link-local and other "
        "non-public addresses (tests, private networks). Off: such addresses are refused at "
        "submission (IP literals) and at every attempt (each address a name resolves to).",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Master secret of webhook signatures (at least 32 characters; required "
        "when webhooks are on): each key signs with HMAC-SHA256(this, 'hbm-webhook:' + key "
        "digest), shown by GET /v1/webhooks/secret.",
    )
    webhook_max_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts of one notification before it fails."
    )
    webhook_backoff_s: float = Field(
        default=5.0,
        gt=0,
        description="Wait before a notification's second attempt; doubled for each further one.",
    )
    webhook_backoff_cap_s: float = Field(
        default=300.0, gt=0, description="Longest wait between two attempts of a notification."
    )
    notify_queue: str = Field(
        default="hbm.notify",
        description="Broker queue of webhook deliveries (consumed by interactive workers).",
    )

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        """A JSON list, or hosts separated by commas."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [host.strip() for host in text.split(",") if host.strip()]
        return value

    @model_validator(mode="after")
    def _webhook_secret_when_on(self) -> Settings:
        """Webhooks on need a signing secret that all processes share (a random one per
        process would make signatures that nobody can check)."""
        if self.webhook_allowed_hosts and (
            self.webhook_secret is None or len(self.webhook_secret.get_secret_value()) < 32
        ):
            raise ValueError(
                "HBM_WEBHOOK_SECRET (at least 32 characters) is required when "
                "HBM_WEBHOOK_ALLOWED_HOSTS is set"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def markdown_table() -> str:
    """Every setting as a row: environment variable, default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        variable = f"HBM_{name.upper()}"
        if field.validation_alias is not None:
            variable = " or ".join(reversed(field.validation_alias.choices))  # type: ignore[union-attr,arg-type]
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None else json.dumps(default, default=str)
        rows.append(f"| `{variable}` | `{shown}` | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
