"""Several worker processes on the same queue, and signals, against real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from kyu_trio import Config, JobStatus, Queue

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def exec_table(pg_dsn: str) -> Iterator[None]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kyu_test_exec (job_id uuid NOT NULL, attempt int NOT NULL)"
        )
        conn.execute("TRUNCATE kyu_test_exec")
    yield


def start_worker(
    pg_dsn: str, redis_url: str, queue: str, workers: int = 4, grace: float = 5.0
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.worker_process",
         pg_dsn, redis_url, queue, str(workers), str(grace)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def status_counts(pg_dsn: str, queue: str) -> dict[str, int]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM kyu_jobs WHERE queue = %s GROUP BY status", (queue,)
        ).fetchall()
    return {status: n for status, n in rows}


async def wait_for(pg_dsn: str, queue: str, status: str, n: int, limit: float = 120.0) -> None:
    """Poll the database (from another process's point of view there is no event to wait on)."""
    with trio.move_on_after(limit):
        while (await trio.to_thread.run_sync(status_counts, pg_dsn, queue)).get(  # noqa: ASYNC110
            status, 0
        ) < n:
            await trio.sleep(0.2)
        return
    raise AssertionError(f"timed out: {status_counts(pg_dsn, queue)}")


async def finish(proc: subprocess.Popen[str]) -> str:
    """Wait for the worker to exit by itself; return its stderr."""
    out, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    assert proc.returncode == 0, err
    assert "serve returned" in out
    return err


async def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    return await finish(proc)


async def test_two_processes_complete_each_job_exactly_once(
    pg_dsn: str, redis_url: str, queue_name: str, exec_table: None
) -> None:
    queue = Queue(Config(dsn=pg_dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0))
    async with queue:
        ids = await queue.enqueue_many([("record", str(i)) for i in range(2000)])
    procs = [start_worker(pg_dsn, redis_url, queue_name) for _ in range(2)]
    try:
        await wait_for(pg_dsn, queue_name, "completed", 2000)
    finally:
        for proc in procs:
            await stop(proc)
    assert status_counts(pg_dsn, queue_name) == {"completed": 2000}
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT job_id::text, count(*) FROM kyu_test_exec GROUP BY job_id"
        ).fetchall()
        workers = conn.execute(
            "SELECT count(DISTINCT locked_by) FROM kyu_jobs WHERE queue = %s", (queue_name,)
        ).fetchone()
    executions = dict(rows)
    assert set(executions) == set(ids)
    assert set(executions.values()) == {1}
    assert workers == (2,)  # both processes took part


async def test_sigterm_requeues_in_flight_job_after_grace(
    pg_dsn: str, redis_url: str, queue_name: str
) -> None:
    queue = Queue(Config(dsn=pg_dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0))
    async with queue:
        job_id = await queue.enqueue("sleep", "60", job_timeout=120)
        proc = start_worker(pg_dsn, redis_url, queue_name, workers=1, grace=1.0)
        await wait_for(pg_dsn, queue_name, "running", 1, limit=30)
        started = time.monotonic()
        await stop(proc)
        assert time.monotonic() - started < 10
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.PENDING
    assert job.retry_count == 0
    assert job.attempt == 1


async def test_sigterm_lets_a_short_job_finish(
    pg_dsn: str, redis_url: str, queue_name: str
) -> None:
    queue = Queue(Config(dsn=pg_dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0))
    async with queue:
        job_id = await queue.enqueue("sleep", "1.5")
        proc = start_worker(pg_dsn, redis_url, queue_name, workers=1, grace=10.0)
        await wait_for(pg_dsn, queue_name, "running", 1, limit=30)
        await stop(proc)
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.COMPLETED


async def test_second_sigterm_skips_the_grace_period(
    pg_dsn: str, redis_url: str, queue_name: str
) -> None:
    queue = Queue(Config(dsn=pg_dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0))
    async with queue:
        job_id = await queue.enqueue("sleep", "60", job_timeout=120)
        proc = start_worker(pg_dsn, redis_url, queue_name, workers=1, grace=60.0)
        await wait_for(pg_dsn, queue_name, "running", 1, limit=30)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await trio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        await finish(proc)
        assert time.monotonic() - started < 10  # far less than the 60 s grace
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.PENDING
    assert job.retry_count == 0
