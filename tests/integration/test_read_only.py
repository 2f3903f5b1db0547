"""Read-only commands against a read-only PostgreSQL (a replica, a read-only database or
user): `connect()` reads the schema version and writes only when a migration is due.

Each test makes a database of its own and sets it read-only with
``ALTER DATABASE ... SET default_transaction_read_only = on``, which applies to sessions
opened afterwards, as on a hot standby; the shared test database is never touched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kyu_trio import Config, JobStatus, KyuConnectionError, Queue, SchemaError
from kyu_trio._store._postgres import SCHEMA_VERSION, PostgresStore
from tests.conftest import PG_ADMIN, _dsn_for

pytestmark = pytest.mark.integration


def admin(sql: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql, params)


def run_sql(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def own_db() -> Iterator[str]:
    """A database of this test's own; its name is ``dsn``'s dbname."""
    name = f"kyu_ro_{uuid.uuid4().hex[:12]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def set_read_only(name: str, on: bool) -> None:
    admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}')


def config(dsn: str, redis_url: str, queue_name: str) -> Config:
    return Config(dsn=dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0)


async def test_read_commands_work_on_a_read_only_database(
    own_db: str, redis_url: str, queue_name: str
) -> None:
    dsn = _dsn_for(own_db)
    async with Queue(config(dsn, redis_url, queue_name)) as producer:
        job_id = await producer.enqueue("report", "{}")
    set_read_only(own_db, True)

    queue = Queue(config(dsn, redis_url, queue_name))
    async with queue:  # no CREATE TABLE: the schema is current
        job = await queue.inspect(job_id)
        assert job.status is JobStatus.PENDING
        stats = await queue.stats()
        assert stats.counts[JobStatus.PENDING] == 1
        assert [j.id for j in await queue.list_jobs()] == [job_id]
        assert await queue.dead_jobs() == []
        # (A write is refused: tests/faults/test_server_errors.py.)

    # /readyz: a store that cannot take writes is not ready.
    store = PostgresStore(dsn)
    await store.open()
    try:
        with pytest.raises(KyuConnectionError, match=r"25006 the server is read-only"):
            await store.ping()
    finally:
        await store.close()


async def test_outdated_schema_on_a_read_only_database_is_a_clear_error(
    own_db: str, redis_url: str, queue_name: str
) -> None:
    dsn = _dsn_for(own_db)
    set_read_only(own_db, True)
    with pytest.raises(SchemaError) as info:
        await Queue(config(dsn, redis_url, queue_name)).connect()
    message = str(info.value)
    assert "has no kyu-trio schema" in message
    assert f"needs version {SCHEMA_VERSION}" in message
    assert "25006" in message and "kyu-trio migrate" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__

    set_read_only(own_db, False)
    async with Queue(config(dsn, redis_url, queue_name)):
        pass  # migrated
    # One migration behind: the version table says so, then the database turns read-only.
    run_sql(dsn, f"DELETE FROM kyu_schema_version WHERE version = {SCHEMA_VERSION}")
    set_read_only(own_db, True)
    with pytest.raises(SchemaError, match=rf"has kyu-trio schema version {SCHEMA_VERSION - 1}, "):
        await Queue(config(dsn, redis_url, queue_name)).connect()


async def test_read_only_user(own_db: str, redis_url: str, queue_name: str) -> None:
    """A user that may only SELECT: reads work; a due migration says it cannot run."""
    dsn = _dsn_for(own_db)
    async with Queue(config(dsn, redis_url, queue_name)) as producer:
        job_id = await producer.enqueue("report", "{}")
    role = f"kyu_reader_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        run_sql(dsn, f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        reader_dsn = psycopg.conninfo.make_conninfo(**{**params, "user": role})
        async with Queue(config(reader_dsn, redis_url, queue_name)) as queue:
            assert (await queue.inspect(job_id)).id == job_id
            assert (await queue.stats()).counts[JobStatus.PENDING] == 1

        run_sql(dsn, f"DELETE FROM kyu_schema_version WHERE version = {SCHEMA_VERSION}")
        with pytest.raises(SchemaError, match=r"cannot migrate there \(42501 permission denied"):
            await Queue(config(reader_dsn, redis_url, queue_name)).connect()
    finally:
        run_sql(dsn, f'DROP OWNED BY "{role}"')
        admin(f'DROP ROLE IF EXISTS "{role}"')
