"""`Config`: every setting of a `Queue`, validated when it is built."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

from ._dsn import mask_password, postgres_address, validate_redis_url
from ._errors import ConfigError

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\-]{1,200}$")

_DEFAULT_LOGGER = logging.getLogger("kyu_trio")


def validate_queue_name(name: object) -> str:
    if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid queue name {name!r}: use 1-200 letters, digits and ':_-.' only"
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


def _positive_int(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attr.name} must be an integer >= 1, got {value!r}")


def _port(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{attr.name} must be a port number 0-65535 (0 disables), got {value!r}")


def _seconds(*, allow_zero: bool = False, at_most: float = math.inf) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
        ok = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and (value >= 0 if allow_zero else value > 0)
            and value < math.inf
            and value <= at_most
        )
        if not ok:
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(
                f"{attr.name} must be a finite number of seconds {bound}, got {value!r}"
            )

    return check


def _fraction(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
        raise ConfigError(f"{attr.name} must be a number between 0 and 10, got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    """Settings of a `Queue`. Every field has a default; durations are in seconds.

    Example::

        config = Config(dsn="postgresql://localhost:5432/app", workers=10)
        config = Config.from_env()   # KYU_DSN, KYU_REDIS_URL, KYU_WORKERS, ...
    """

    dsn: str = attrs.field(default="postgresql://localhost:5432/kyu", validator=_check_dsn,
                           repr=mask_password)
    redis_url: str = attrs.field(default="redis://localhost:6379/0", validator=_check_redis,
                                 repr=mask_password)
    workers: int = attrs.field(default=5, validator=_positive_int)
    queue_name: str = attrs.field(default="kyu:default", validator=_check_queue)
    metrics_port: int = attrs.field(default=9090, validator=_port)
    metrics_host: str = "127.0.0.1"
    #: How often queue depth, lag and counts by status are sampled for the metrics.
    metrics_sample_interval: float = attrs.field(default=10.0, validator=_seconds())
    stale_job_timeout: float = attrs.field(default=600.0, validator=_seconds())
    heartbeat_interval: float = attrs.field(default=5.0, validator=_seconds())
    scheduler_interval: float = attrs.field(default=5.0, validator=_seconds())
    reaper_interval: float = attrs.field(default=60.0, validator=_seconds())
    default_job_timeout: float = attrs.field(default=30.0, validator=_seconds(at_most=366 * 86400))
    max_backoff: float = attrs.field(default=3600.0, validator=_seconds())
    retry_jitter: float = attrs.field(default=0.0, validator=_fraction)
    shutdown_grace: float = attrs.field(default=30.0, validator=_seconds(allow_zero=True))
    #: Connections in each of the PostgreSQL and Redis pools (and threads using them).
    pool_size: int = attrs.field(default=10, validator=_positive_int)
    #: Largest payload `enqueue` accepts, in bytes of UTF-8.
    max_payload_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=_positive_int)
    #: Wait for PostgreSQL's WAL flush on enqueue and on recording outcomes. Off trades
    #: durability for speed: a PostgreSQL crash may forget the last few hundred ms of
    #: enqueued jobs and outcomes (outcomes are then re-run: still at-least-once).
    synchronous_commit: bool = True
    #: Include payloads in log lines (off: payloads often hold personal data).
    log_payloads: bool = False
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
                raise ConfigError(f"{var}={raw!r} is not a valid {conv.__name__}") from exc
        values.update(overrides)
        return cls(**values)
