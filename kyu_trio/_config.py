"""`Config`: every setting of a `Queue`, validated when it is built."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

from ._dsn import mask_password, postgres_address, validate_redis_url
from ._errors import ConfigError

QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9:_.\-]{1,200}")

#: Longest duration setting: a year. Timestamps computed from a setting (``now -
#: stale_job_timeout``, ``now + max_backoff``) must stay far from datetime's year 1..9999
#: and from PostgreSQL's interval limits, or the reaper and the retry path would raise
#: OverflowError at run time instead of Config refusing the value up front.
MAX_SECONDS = 366 * 86400.0
#: Upper bounds for counts: far above any sane setting, low enough that a typo (an extra
#: few zeros) is an error and not a process that runs out of memory or connections.
MAX_WORKERS = 100_000
MAX_POOL_SIZE = 10_000
#: PostgreSQL's own limit for a text value.
MAX_PAYLOAD_BYTES = 1024**3 - 1
#: Below PostgreSQL's limit for a jsonb value (255 MiB, less its header).
MAX_RESULT_BYTES = 255 * 1024**2 - 1024
#: Most runs a job's history may keep.
MAX_ATTEMPTS_KEPT = 10_000

_DEFAULT_LOGGER = logging.getLogger("kyu_trio")


def shown(value: object, width: int = 60) -> str:
    """``repr(value)`` for an error message: cut to ``width`` characters, and never an
    error itself (the repr of an int over 4300 digits raises ValueError)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def validate_queue_name(name: object) -> str:
    if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
        # Plain ASCII only: no control character, space or quote can reach Redis keys or
        # log lines. The repr escapes whatever the name holds and is cut short.
        raise ConfigError(
            f"invalid queue name {shown(name, 80)}: use 1-200 letters, digits and ':_-.' only"
        )
    return name


def _check_dsn(_inst: Any, _attr: Any, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError("dsn must be a non-empty PostgreSQL connection string")
    postgres_address(value)


def _check_redis(_inst: Any, _attr: Any, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError("redis_url must be a non-empty Redis URL")
    validate_redis_url(value)


def _check_queue(_inst: Any, _attr: Any, value: object) -> None:
    validate_queue_name(value)


def _count(at_most: int) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= at_most:
            raise ConfigError(
                f"{attr.name} must be an integer from 1 to {at_most}, got {shown(value)}"
            )

    return check


def _host(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
        raise ConfigError(
            f"{attr.name} must be a host name or IP address to listen on, got {shown(value, 80)}"
        )


def _port(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(
            f"{attr.name} must be a port number 0-65535 (0 disables), got {shown(value)}"
        )


def _seconds(*, allow_zero: bool = False) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
        ok = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and (value >= 0 if allow_zero else value > 0)  # False for NaN
            and value <= MAX_SECONDS  # no float() of a huge int
        )
        if not ok:
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(
                f"{attr.name} must be a number of seconds {bound} and at most "
                f"{MAX_SECONDS:.0f} (366 days), got {shown(value)}"
            )

    return check


def _fraction(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
        raise ConfigError(f"{attr.name} must be a number between 0 and 10, got {shown(value)}")


# ---- retention (docs/how-to/retention.md) ----

#: Longest retention: 100 years. The pruner computes ``now - retention``, which must stay
#: far from datetime's year 1 (an OverflowError in the leader otherwise).
MAX_RETENTION = 100 * 365.25 * 86400


def _retention(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    ok = value is None or (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and 0 < value <= MAX_RETENTION  # False for NaN; no float() of a huge int
    )
    if not ok:
        raise ConfigError(
            f"{attr.name} must be a number of seconds > 0 and at most {MAX_RETENTION:.0f} "
            f"(100 years), or None to keep those jobs forever, got {shown(value)}"
        )


@attrs.frozen(kw_only=True)
class Config:
    """Settings of a `Queue`. Every field has a default; durations are in seconds.

    Example::

        config = Config(dsn="postgresql://localhost:5432/app", workers=10)
        config = Config.from_env()   # KYU_DSN, KYU_REDIS_URL, KYU_WORKERS, ...
    """

    dsn: str = attrs.field(
        default="postgresql://localhost:5432/kyu", validator=_check_dsn, repr=mask_password
    )
    redis_url: str = attrs.field(
        default="redis://localhost:6379/0", validator=_check_redis, repr=mask_password
    )
    #: Jobs run at once per process. Chosen for async I/O-bound handlers (the common case),
    #: whose throughput grows with concurrency: see bench/results/peers-defaults.md (other
    #: values, and pgqueuer at its defaults, in the same rounds).
    workers: int = attrs.field(default=100, validator=_count(MAX_WORKERS))
    queue_name: str = attrs.field(default="kyu:default", validator=_check_queue)
    metrics_port: int = attrs.field(default=9090, validator=_port)
    metrics_host: str = attrs.field(default="127.0.0.1", validator=_host)
    #: How often queue depth, lag and counts by status are sampled for the metrics.
    metrics_sample_interval: float = attrs.field(default=10.0, validator=_seconds())
    stale_job_timeout: float = attrs.field(default=600.0, validator=_seconds())
    heartbeat_interval: float = attrs.field(default=5.0, validator=_seconds())
    scheduler_interval: float = attrs.field(default=5.0, validator=_seconds())
    reaper_interval: float = attrs.field(default=60.0, validator=_seconds())
    #: How often a process that does not lead the queue's maintenance asks for the lease,
    #: and how long a lease lasts unrenewed (its holder renews it three times as often):
    #: the role passes from a leader that died or lost PostgreSQL within two of these.
    leader_interval: float = attrs.field(default=5.0, validator=_seconds())
    default_job_timeout: float = attrs.field(default=30.0, validator=_seconds())
    max_backoff: float = attrs.field(default=3600.0, validator=_seconds())
    retry_jitter: float = attrs.field(default=0.0, validator=_fraction)
    shutdown_grace: float = attrs.field(default=30.0, validator=_seconds(allow_zero=True))
    #: Connections in each of the PostgreSQL and Redis pools (and threads using them).
    pool_size: int = attrs.field(default=10, validator=_count(MAX_POOL_SIZE))
    #: Largest payload `enqueue` accepts, in bytes of its JSON encoding (UTF-8).
    max_payload_bytes: int = attrs.field(
        default=10 * 1024 * 1024, validator=_count(MAX_PAYLOAD_BYTES)
    )
    #: Largest handler result stored, in bytes of its JSON encoding (UTF-8). A larger (or
    #: non-JSON) result makes the job dead with a ``ResultError`` message.
    max_result_bytes: int = attrs.field(default=1024 * 1024, validator=_count(MAX_RESULT_BYTES))
    #: Runs kept in each job's `Job.attempts` history (the most recent ones).
    max_attempts_kept: int = attrs.field(default=20, validator=_count(MAX_ATTEMPTS_KEPT))
    #: Wait for PostgreSQL's WAL flush on enqueue and on recording outcomes. Off trades
    #: durability for speed: a PostgreSQL crash may forget the last few hundred ms of
    #: enqueued jobs and outcomes (outcomes are then re-run: still at-least-once).
    synchronous_commit: bool = True
    #: Include payloads in log lines (off: payloads often hold personal data).
    log_payloads: bool = False
    #: Seconds a finished job is kept, by its final status, before the queue's maintenance
    #: leader deletes it (None: kept forever). Counted from ``completed_at`` for completed
    #: jobs, from the last change (``updated_at``) for cancelled and dead ones.
    retention_completed: float | None = attrs.field(default=7 * 86400.0, validator=_retention)
    retention_cancelled: float | None = attrs.field(default=7 * 86400.0, validator=_retention)
    retention_dead: float | None = attrs.field(default=30 * 86400.0, validator=_retention)
    logger: logging.Logger = attrs.field(default=_DEFAULT_LOGGER, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_interval >= self.stale_job_timeout:
            raise ConfigError(
                "heartbeat_interval must be shorter than stale_job_timeout, or live jobs "
                f"look stale (got {self.heartbeat_interval} >= {self.stale_job_timeout})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a Config from ``KYU_DSN``, ``KYU_REDIS_URL``, ``KYU_WORKERS``, ``KYU_QUEUE``,
        ``KYU_METRICS_PORT`` and ``KYU_METRICS_HOST``; unset variables keep their defaults.

        Example::

            queue = Queue(Config.from_env(shutdown_grace=5))
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, field, conv in (
            ("KYU_DSN", "dsn", str),
            ("KYU_REDIS_URL", "redis_url", str),
            ("KYU_WORKERS", "workers", int),
            ("KYU_QUEUE", "queue_name", str),
            ("KYU_METRICS_PORT", "metrics_port", int),
            ("KYU_METRICS_HOST", "metrics_host", str),
        ):
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[field] = conv(raw)
            except ValueError as exc:
                raise ConfigError(f"{var}={shown(raw)} is not a valid {conv.__name__}") from exc
        values.update(overrides)
        return cls(**values)
