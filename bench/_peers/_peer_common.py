"""Shared by the peer apps of bench/peers.py.

Runs inside each peer's own virtualenv, never in kyu-trio's: it needs the standard library and
the ``redis`` client only. Everything is configured through environment variables set by
bench/peers.py:

    PEER_REDIS_URL      the peer's own Redis database (redis://127.0.0.1:6379/<n>)
    PEER_DSN            the peer's own PostgreSQL database (PostgreSQL-backed peers only)
    PEER_COUNTER_KEY    the Redis key every no-op job increments (unique per run)
    PEER_CONCURRENCY    the in-process concurrency the peer's worker is given
    PEER_DEFAULTS       "1": run the worker with the peer's own defaults (PEER_CONCURRENCY
                        ignored), for the comparison of defaults
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis
import redis.asyncio

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/15")
DSN = os.environ.get("PEER_DSN", "")
COUNTER_KEY = os.environ.get("PEER_COUNTER_KEY", "kyu-peer-bench:counter")
CONCURRENCY = int(os.environ.get("PEER_CONCURRENCY", "10"))
DEFAULTS = os.environ.get("PEER_DEFAULTS") == "1"

# Every peer gets two queues: QUEUE is the one its workers serve; the single-enqueue figure is
# measured on SINGLE_QUEUE, which no worker serves (as kyu-trio's "<queue>-single").
QUEUE = "bench"
SINGLE_QUEUE = "single"

_sync_client: tuple[int, redis.Redis] | None = None
_async_clients: dict[tuple[int, int], Any] = {}


def incr() -> None:
    """The no-op job's only work, for synchronous peers: one INCR round trip."""
    global _sync_client
    pid = os.getpid()
    if _sync_client is None or _sync_client[0] != pid:  # a new client after a fork
        _sync_client = (pid, redis.Redis.from_url(REDIS_URL))
    _sync_client[1].incr(COUNTER_KEY)


async def aincr() -> None:
    """The no-op job's only work, for asyncio peers: one INCR round trip."""
    key = (os.getpid(), id(asyncio.get_running_loop()))
    client = _async_clients.get(key)
    if client is None:
        # A blocking pool: a peer with no concurrency cap (pgqueuer) would otherwise open
        # connections until redis-py's pool limit raises MaxConnectionsError.
        pool = redis.asyncio.BlockingConnectionPool.from_url(REDIS_URL, max_connections=64)
        client = _async_clients[key] = redis.asyncio.Redis(connection_pool=pool)
    await client.incr(COUNTER_KEY)
