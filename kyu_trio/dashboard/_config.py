"""`DashboardConfig`: every setting of the web dashboard, validated when it is built."""

from __future__ import annotations

import secrets
from typing import Any

import attrs

from .._config import shown, validate_queue_name
from .._dsn import mask_password, postgres_address, validate_redis_url
from .._errors import ConfigError


@attrs.frozen
class BasicAuth:
    """HTTP basic credentials the dashboard asks for (compared in constant time).

    Example::

        create_app(dsn=dsn, auth=BasicAuth("ops", os.environ["KYU_DASHBOARD_PASSWORD"]))
    """

    user: str
    password: str = attrs.field(repr=lambda _: "***")

    def __attrs_post_init__(self) -> None:
        if not self.user or ":" in self.user or not self.password:
            raise ConfigError(
                "basic auth needs a non-empty user name without ':' and a non-empty password"
            )


@attrs.frozen
class BearerAuth:
    """A bearer token the dashboard asks for in ``Authorization: Bearer <token>`` (for a
    reverse proxy or a script in front of it; compared in constant time).

    Example::

        create_app(dsn=dsn, auth=BearerAuth(os.environ["KYU_DASHBOARD_TOKEN"]))
    """

    token: str = attrs.field(repr=lambda _: "***")

    def __attrs_post_init__(self) -> None:
        if len(self.token) < 16:
            raise ConfigError("the bearer token must be at least 16 characters long")


def _dsn(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    if value is None and attr.name == "primary_dsn":
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{attr.name} must be a non-empty PostgreSQL connection string")
    postgres_address(value)


def _redis(_inst: Any, _attr: Any, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError("redis_url must be a non-empty Redis URL")
    validate_redis_url(value)


def _queues(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple | set | frozenset):
        raise ConfigError(f"queues must be a list of queue names, got {shown(value)}")
    names: list[str] = []
    for name in value:
        validate_queue_name(name)
        if name not in names:
            names.append(name)
    return tuple(names)


def _number(low: float, high: float, *, integer: bool = False) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
            or not low <= value <= high
        ):
            kind = "an integer" if integer else "a number"
            raise ConfigError(
                f"{attr.name} must be {kind} from {low:g} to {high:g}, got {shown(value)}"
            )

    return check


def _secret(value: object) -> bytes:
    if value is None:
        # One per process: a restart makes open forms ask again. Several processes behind
        # one address need the same secret (csrf_secret=...).
        return secrets.token_bytes(32)
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes) or len(value) < 16:
        raise ConfigError("csrf_secret must be at least 16 bytes (or None for a random one)")
    return value


def _auth(_inst: Any, _attr: Any, value: object) -> None:
    if value is not None and not isinstance(value, BasicAuth | BearerAuth):
        raise ConfigError(
            f"auth must be BasicAuth(...), BearerAuth(...) or None, got {shown(value)}"
        )


def _origins(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple):
        raise ConfigError(
            "trusted_origins must be a list of origins such as https://ops.example.com"
        )
    return tuple(str(v).rstrip("/") for v in value)


@attrs.frozen(kw_only=True)
class DashboardConfig:
    """Settings of the web dashboard (`create_app`); every one is a keyword argument of
    `create_app` too. Durations are in seconds.

    ``dsn`` is where the dashboard reads, on a small pool of its own (``pool_size``
    connections, read-only transactions, ``statement_timeout`` per statement): it may be
    a read replica. Actions (retry, cancel, delete, pause, run a cron entry) go through
    `kyu_trio.Client` to ``primary_dsn``, or to ``dsn`` when that is not a replica; with
    neither, or with ``read_only``, the dashboard offers no action at all.

    ``queues``: the queues shown (and the only ones acted on); empty, or with
    ``discover_queues``, also every queue the database knows cheaply (paused, led, with
    cron entries, limits or serving processes).

    Example::

        config = DashboardConfig(dsn="postgresql://replica/app", primary_dsn=primary,
                                 queues=["kyu:default"], auth=BasicAuth("ops", password))
    """

    dsn: str = attrs.field(validator=_dsn, repr=mask_password)
    redis_url: str = attrs.field(
        default="redis://localhost:6379/0", validator=_redis, repr=mask_password
    )
    #: Where actions go when ``dsn`` is a replica (None: ``dsn`` itself when writable).
    primary_dsn: str | None = attrs.field(
        default=None, validator=_dsn, repr=lambda v: "None" if v is None else mask_password(v)
    )
    queues: tuple[str, ...] = attrs.field(default=(), converter=_queues)
    #: Also show the queues found in kyu_queues, kyu_leaders, kyu_cron, kyu_limits and
    #: kyu_processes (small tables; never a scan of kyu_jobs). Default: when no queue is
    #: given.
    discover_queues: bool | None = None
    #: No action anywhere: no button, and every POST answers 403.
    read_only: bool = False
    auth: BasicAuth | BearerAuth | None = attrs.field(default=None, validator=_auth)
    #: Show payloads on the job page (off: they often hold personal data).
    show_payloads: bool = False
    statement_timeout: float = attrs.field(default=5.0, validator=_number(0.01, 600))
    #: Connections of the dashboard's own read pool (never the workers').
    pool_size: int = attrs.field(default=4, validator=_number(1, 100, integer=True))
    #: Signs the anti-CSRF tokens; None: a random one per process.
    csrf_secret: bytes = attrs.field(default=None, converter=_secret, repr=False)
    #: Origins allowed on POSTs besides the request's own host (behind a proxy that
    #: rewrites the Host header), e.g. ``["https://ops.example.com"]``.
    trusted_origins: tuple[str, ...] = attrs.field(default=(), converter=_origins)
    #: Seconds between the overview's live updates (0: none).
    refresh_interval: float = attrs.field(default=5.0, validator=_number(0, 3600))
    page_size: int = attrs.field(default=50, validator=_number(1, 1000, integer=True))
    #: Most rows one list request examines for a filter no index answers whole (a job
    #: type, a time range on another column): past it, the page says how far it looked
    #: and links to the rest.
    scan_limit: int = attrs.field(default=20_000, validator=_number(1000, 10_000_000, integer=True))
    #: Counts by status up to this are exact; above it, the planner's estimate ("about").
    exact_count_limit: int = attrs.field(
        default=10_000, validator=_number(100, 10_000_000, integer=True)
    )
    #: Most jobs one "apply to the whole filter" request acts on.
    bulk_limit: int = attrs.field(default=100_000, validator=_number(1, 10_000_000, integer=True))
    title: str = "kyu-trio"

    @property
    def discovering(self) -> bool:
        return self.discover_queues if self.discover_queues is not None else not self.queues
