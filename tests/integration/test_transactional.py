"""Transactional enqueue (``conn=``) with each client against real servers: a rollback
leaves no row, nothing in Redis and nothing run; a commit runs the job within a second
with no other call (a serving worker pushes it on the row's notification); an open
transaction's job is invisible to others; a failed transaction or a database without
the schema is a clear error (issue 12, point 4)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest
import redis
import trio
from psycopg.conninfo import make_conninfo

from kyu_trio import (
    AsyncioClient,
    Client,
    Config,
    JobNotFound,
    JobStatus,
    Queue,
    SchemaError,
    TransactionError,
)

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: The promise: committed -> running, with no other call, within this long.
RUNS_WITHIN = 1.0


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[list[str]]:
    """A worker serving ``config``'s queue; yields the payloads its handler got."""
    ran: list[str] = []
    # A long reaper interval: only the notification, not the sweep, can push in time.
    worker = Queue(config)

    @worker.handler("note")
    async def note(payload: str) -> None:
        ran.append(payload)

    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        try:
            yield ran
        finally:
            worker.shutdown()


async def _until(ran: list[str], payload: str, limit: float) -> float:
    start = time.monotonic()
    with trio.fail_after(limit):
        while payload not in ran:  # noqa: ASYNC110 (the handler appends; polling is simplest)
            await trio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(reaper_interval=600.0)


def _row_count(dsn: str, job_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM kyu_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return int(row[0])


def _in_redis(redis_url: str, queue: str, job_id: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        return client.zscore(queue, job_id) is not None
    finally:
        client.close()


# ---- Queue (trio) ------------------------------------------------------------------------


async def test_queue_rollback_leaves_nothing_and_commit_runs(config: Config, pg_dsn: str) -> None:
    async with serving(config) as ran, Queue(config) as queue:
        conn = await trio.to_thread.run_sync(psycopg.connect, pg_dsn)
        try:
            rolled = await queue.enqueue("note", "rolled back", conn=conn)
            await trio.to_thread.run_sync(conn.rollback)
            assert _row_count(pg_dsn, rolled) == 0
            assert not _in_redis(config.redis_url, config.queue_name, rolled)
            with pytest.raises(JobNotFound):
                await queue.inspect(rolled)

            kept = await queue.enqueue("note", "committed", conn=conn)
            # Still open: invisible to anyone else.
            with pytest.raises(JobNotFound):
                await queue.inspect(kept)
            await trio.to_thread.run_sync(conn.commit)
            await _until(ran, "committed", RUNS_WITHIN)
            # Many in one transaction (the COPY path) too.
            ids = await queue.enqueue_many([("note", f"many {i}") for i in range(50)], conn=conn)
            await trio.to_thread.run_sync(conn.commit)
            for i in range(50):
                await _until(ran, f"many {i}", RUNS_WITHIN)
        finally:
            conn.close()
        assert "rolled back" not in ran
        assert (await queue.inspect(ids[0])).status is JobStatus.COMPLETED


async def test_queue_errors_for_a_failed_transaction_and_a_database_without_schema(
    config: Config, pg_dsn: str, bare_dsn: str
) -> None:
    async with Queue(config) as queue:
        with psycopg.connect(pg_dsn) as conn:
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            with pytest.raises(TransactionError, match="roll it back"):
                await queue.enqueue("note", "x", conn=conn)
        with psycopg.connect(bare_dsn) as conn:
            with pytest.raises(SchemaError, match="no kyu-trio schema"):
                await queue.enqueue("note", "x", conn=conn)
            # The check never aborts the caller's transaction.
            assert conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(TransactionError, match=r"psycopg\.Connection"):
            await queue.enqueue("note", "x", conn=object())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bare_dsn(pg_dsn: str) -> Iterator[str]:
    """A database with no kyu-trio schema."""
    name = f"kyu_bare_{uuid.uuid4().hex[:8]}"
    admin = make_conninfo(pg_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(pg_dsn, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- Client (threads) -------------------------------------------------------------------


async def test_client_rollback_leaves_nothing_and_commit_runs(config: Config, pg_dsn: str) -> None:
    def rolled_back() -> str:
        with Client(config) as client, psycopg.connect(pg_dsn) as conn:
            job_id = client.enqueue("note", "rolled back", conn=conn)
            conn.rollback()
            with pytest.raises(JobNotFound):
                client.inspect(job_id)
            return job_id

    def committed() -> str:
        with Client(config) as client, psycopg.connect(pg_dsn) as conn:
            with conn.transaction():
                job_id = client.enqueue("note", "committed", conn=conn)
                with pytest.raises(JobNotFound):
                    client.inspect(job_id)  # another connection: not visible yet
            return job_id

    async with serving(config) as ran:
        rolled = await trio.to_thread.run_sync(rolled_back)
        await trio.to_thread.run_sync(committed)
        await _until(ran, "committed", RUNS_WITHIN)
    assert _row_count(pg_dsn, rolled) == 0
    assert not _in_redis(config.redis_url, config.queue_name, rolled)
    assert "rolled back" not in ran


def test_client_errors_for_a_failed_transaction_and_a_database_without_schema(
    config: Config, pg_dsn: str, bare_dsn: str
) -> None:
    with Client(config) as client:
        with psycopg.connect(pg_dsn) as conn:
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            with pytest.raises(TransactionError, match="has failed"):
                client.enqueue("note", "x", conn=conn)
        with psycopg.connect(bare_dsn) as conn, pytest.raises(SchemaError, match="migrate"):
            client.enqueue_many([("note", "x"), ("note", "y")], conn=conn)


# ---- AsyncioClient ------------------------------------------------------------------------


async def test_asyncio_client_rollback_leaves_nothing_and_commit_runs(
    config: Config, pg_dsn: str, bare_dsn: str
) -> None:
    async def produce() -> tuple[str, str]:
        async with AsyncioClient(config) as client:
            async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
                rolled = await client.enqueue("note", "rolled back", conn=conn)
                await conn.rollback()
                with pytest.raises(JobNotFound):
                    await client.inspect(rolled)
                async with conn.transaction():
                    kept = await client.enqueue("note", "committed", conn=conn)
                    with pytest.raises(JobNotFound):
                        await client.inspect(kept)
                with pytest.raises(psycopg.errors.DivisionByZero):
                    await conn.execute("SELECT 1/0")
                with pytest.raises(TransactionError):
                    await client.enqueue("note", "x", conn=conn)
                await conn.rollback()
                sync_conn = psycopg.connect(pg_dsn)
                try:
                    with pytest.raises(TransactionError, match="AsyncConnection"):
                        await client.enqueue("note", "x", conn=sync_conn)  # type: ignore[arg-type]
                finally:
                    sync_conn.close()
            async with await psycopg.AsyncConnection.connect(bare_dsn) as conn:
                with pytest.raises(SchemaError):
                    await client.enqueue("note", "x", conn=conn)
        return rolled, kept

    async with serving(config) as ran:
        rolled, _ = await trio.to_thread.run_sync(asyncio.run, produce())
        await _until(ran, "committed", RUNS_WITHIN)
    assert _row_count(pg_dsn, rolled) == 0
    assert not _in_redis(config.redis_url, config.queue_name, rolled)
    assert "rolled back" not in ran


async def test_a_job_committed_while_no_worker_listened_runs_when_one_starts(
    config: Config, pg_dsn: str
) -> None:
    def produce() -> None:
        with Client(config) as client, psycopg.connect(pg_dsn) as conn:
            client.enqueue("note", "before the worker", conn=conn)
            conn.commit()

    await trio.to_thread.run_sync(produce)
    async with serving(config) as ran:
        await _until(ran, "before the worker", 5.0)


# ---- the examples -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "example", ["transactional.py", "transactional_django.py", "transactional_sqlalchemy.py"]
)
def test_transactional_examples(example: str, config: Config, pg_dsn: str) -> None:
    """examples/transactional*.py (docs/how-to/transactional-enqueue.md): a rollback
    leaves neither order nor job, a commit runs the job."""
    env = {
        **os.environ,
        "KYU_DSN": pg_dsn,
        "KYU_REDIS_URL": config.redis_url,
        "KYU_QUEUE": config.queue_name,
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("rolled back: no order")
    assert re.fullmatch(r"order \d+ shipped", lines[1])
