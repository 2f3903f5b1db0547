"""The dashboard's connections: its own small PostgreSQL read pool, the Redis client of
its depth gauge, and the `Client` of each queue for actions; every blocking call runs in
a worker thread through `anyio.to_thread`, so the app runs on asyncio and trio alike.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import psycopg
import psycopg_pool
import redis
import redis.exceptions
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._broker._redis import redis_error
from .._clients._sync import Client
from .._config import Config
from .._dsn import postgres_address, redis_address
from .._errors import KyuError
from .._store._postgres import CONNECT_TIMEOUT, _first_line, map_error
from ._config import DashboardConfig

T = TypeVar("T")

log = logging.getLogger("kyu_trio.dashboard")

#: Connections of each queue's `Client` (actions are rare, and one at a time per click).
ACTION_POOL_SIZE = 2
REDIS_TIMEOUT = 2.0


class DashboardError(KyuError):
    """A read of the dashboard failed: PostgreSQL or Redis is unreachable, a query ran
    into the statement timeout, the schema is missing. The dashboard shows it as an error
    page (HTTP 503) or banner, never as a traceback; the message names the server (never
    a password) and what to do.

    Example::

        try:
            info = await dashboard.db.run(server_info)
        except DashboardError as exc:
            print(exc)  # PostgreSQL at db:5432 did not give a connection in time: ...
    """


class StatementTimeout(DashboardError):
    """A read took longer than the dashboard's statement timeout
    (`DashboardConfig.statement_timeout`, 5 s by default) and PostgreSQL cancelled it.

    Example::

        except StatementTimeout:
            ...  # PostgreSQL is overloaded, or a lock holds kyu_jobs
    """


def _options(dsn: str, timeout_ms: int) -> str:
    """The DSN with the read pool's own settings added to any ``options`` it has."""
    params = conninfo_to_dict(dsn)
    own = f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout=60000"
    given = str(params.get("options") or "")
    params["options"] = f"{given} {own}".strip()
    params.setdefault("application_name", "kyu-trio dashboard")
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def _read_only(conn: psycopg.Connection[Any]) -> None:
    # Every transaction of the pool: BEGIN READ ONLY (the server refuses any write).
    conn.read_only = True


class ReadDatabase:
    """The read pool: ``pool_size`` connections at most (one to start with), each
    transaction read-only, each statement cut at ``statement_timeout``."""

    def __init__(self, config: DashboardConfig) -> None:
        self._config = config
        self.address = postgres_address(config.dsn)
        self._timeout_ms = max(1, round(config.statement_timeout * 1000))
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    def _open(self) -> psycopg_pool.ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                    _options(self._config.dsn, self._timeout_ms),
                    min_size=1,
                    max_size=self._config.pool_size,
                    open=False,
                    kwargs={
                        "connect_timeout": CONNECT_TIMEOUT,
                        # Planned with the real values each time: a generic plan could not
                        # tell a partial index fits.
                        "prepare_threshold": None,
                    },
                    configure=_read_only,
                    check=psycopg_pool.ConnectionPool.check_connection,
                    # How long a page waits for a connection: PostgreSQL down must become
                    # an error page within seconds, not hang the page.
                    timeout=min(10.0, max(2.0, self._config.statement_timeout + 1.0)),
                    name="kyu_trio.dashboard",
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        pool = self._open()
        try:
            with pool.connection() as conn:
                return fn(conn)
        except psycopg_pool.PoolTimeout:
            raise DashboardError(
                f"PostgreSQL at {self.address} did not give a connection in time: it is "
                "unreachable, refuses the dashboard, or every connection of the dashboard's "
                "pool is busy"
            ) from None
        except psycopg.errors.QueryCanceled:
            raise StatementTimeout(
                f"a query took longer than the dashboard's statement timeout "
                f"({self._config.statement_timeout:g} s) and was cancelled: PostgreSQL at "
                f"{self.address} is overloaded or a lock holds the table"
            ) from None
        except psycopg.errors.UndefinedTable as exc:
            raise DashboardError(
                f"the database at {self.address} lacks kyu-trio tables ({_first_line(exc)}): "
                "run `kyu-trio migrate` against the primary, or start a worker once"
            ) from None
        except psycopg.Error as exc:
            raise DashboardError(str(map_error(exc, self.address))) from None

    async def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn(conn)`` in a worker thread, in one read-only transaction."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._config.pool_size)
        return await anyio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


class Depths:
    """Ready ids per queue in Redis (``ZCARD``): the dispatch's view of the backlog."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.address = redis_address(url)
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def _get(self, queues: Sequence[str]) -> list[int]:
        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self._url,
                    socket_connect_timeout=REDIS_TIMEOUT,
                    socket_timeout=REDIS_TIMEOUT,
                    max_connections=4,
                )
            client = self._client
        try:
            with client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.zcard(queue)
                return [int(n) for n in pipe.execute()]
        except redis.exceptions.RedisError as exc:
            raise DashboardError(str(redis_error(self.address, exc))) from None

    async def get(self, queues: Sequence[str]) -> list[int]:
        return await anyio.to_thread.run_sync(self._get, list(queues))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class Actions:
    """One `kyu_trio.Client` per queue, on the primary, made on first use: every action
    of the dashboard is a call of the library's own API."""

    def __init__(self, dsn: str, redis_url: str) -> None:
        self._dsn = dsn
        self._redis_url = redis_url
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    def client(self, queue: str) -> Client:
        with self._lock:
            client = self._clients.get(queue)
            if client is None:
                config = Config(
                    dsn=self._dsn,
                    redis_url=self._redis_url,
                    queue_name=queue,
                    pool_size=ACTION_POOL_SIZE,
                    metrics_port=0,
                )
                client = self._clients[queue] = Client(config)
            return client

    async def run(self, queue: str, fn: Callable[[Client], T]) -> T:
        """``fn(client)`` with the queue's client, in a worker thread (its `KyuError`
        propagates: the page says what went wrong)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(4)
        return await anyio.to_thread.run_sync(lambda: fn(self.client(queue)), limiter=self._limiter)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
