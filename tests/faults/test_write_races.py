"""Deterministic regression tests for two races the many-workers scenario used to hit by
chance (fixed in 16982b6):

1. a batched heartbeat and a batched completion of the same worker deadlocked in
   PostgreSQL (they locked the same rows in opposite orders);
2. when writing a batch of outcomes failed once (a deadlock, a dropped connection), the
   retry did not write it again: the jobs stayed ``running`` until the reaper rescued
   them, and then they ran a second time (or ended dead with no retry left).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import trio

from kyu_trio import (
    Config,
    JobStatus,
    KyuConnectionError,
    MemoryBroker,
    MemoryStore,
    Queue,
    TrioClock,
)
from kyu_trio._ports import Lease, NewJob
from kyu_trio._store._postgres import PostgresStore
from tests.faults.harness import ThrowawayPostgres

pytestmark = pytest.mark.integration


def waiting_on_locks(dsn: str, like: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s",
            (like,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def wait_for_waiters(dsn: str, like: str, done: trio.Event | None = None) -> None:
    """Until a statement matching ``like`` waits on a lock (or ``done`` is set)."""
    with trio.fail_after(10):
        while not (done is not None and done.is_set()):
            if await trio.to_thread.run_sync(waiting_on_locks, dsn, like):
                return
            await trio.sleep(0.01)


async def test_concurrent_heartbeat_and_completion_do_not_deadlock(
    race_db: str,
) -> None:
    """The worker's heartbeat and its completer write the same running rows at the same
    time. Forced interleaving: a third transaction holds row a; the completion (a, b)
    queues behind it first, then the heartbeat (b, a) takes b and queues for a. When a
    is released, neither statement may fail."""
    store = PostgresStore(race_db, pool_size=4)
    await store.open()
    queue, worker = f"kyu:race-{uuid.uuid4().hex[:8]}", "race-worker"
    now = datetime.now(UTC)
    jobs = [
        NewJob(id=str(uuid.uuid4()), queue=queue, job_type="t", payload="", priority=0,
               max_retries=0, scheduled_at=now, job_timeout=30.0, status=JobStatus.PENDING)
        for _ in range(2)
    ]  # fmt: skip
    try:
        await trio.to_thread.run_sync(add_other_workers_rows, race_db)
        await store.insert_jobs(jobs, now)
        claimed = await store.claim_jobs(queue, [j.id for j in jobs], worker, now)
        a, b = (Lease(j.id, j.attempt) for j in claimed)
        if not await trio.to_thread.run_sync(plan_follows_array_order, race_db, worker):
            pytest.skip("this PostgreSQL plans the batched UPDATE differently")
        errors: list[BaseException] = []

        async def call(fn: Any, leases: Sequence[Lease], done: trio.Event) -> None:
            try:
                await fn(leases, worker, datetime.now(UTC))
            except KyuConnectionError as exc:
                errors.append(exc)
            finally:
                done.set()

        blocker = await trio.to_thread.run_sync(psycopg.connect, race_db)
        try:
            await trio.to_thread.run_sync(
                lambda: blocker.execute("SELECT 1 FROM kyu_jobs WHERE id = %s FOR UPDATE", (a.id,))
            )
            async with trio.open_nursery() as nursery:
                try:
                    nursery.start_soon(call, store.complete_jobs, [a, b], trio.Event())
                    await wait_for_waiters(race_db, "%SET status = 'completed'%")
                    beat = trio.Event()
                    nursery.start_soon(call, store.heartbeat, [b, a], beat)
                    await wait_for_waiters(race_db, "%SET heartbeat_at%", beat)
                finally:
                    # Always let go of row a, or the threads above would wait forever.
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(blocker.rollback)
        finally:
            await trio.to_thread.run_sync(blocker.close)
        assert not errors, errors
        for lease in (a, b):
            job = await store.get_job(lease.id)
            assert job is not None and job.status is JobStatus.COMPLETED
    finally:
        await store.close()


def add_other_workers_rows(dsn: str) -> None:
    """A table like a busy queue's: thousands of rows running in other workers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO kyu_jobs (id, queue, job_type, payload, status, scheduled_at, "
            "max_retries, job_timeout, created_at, updated_at, locked_by, locked_at, "
            "heartbeat_at, attempt) SELECT gen_random_uuid(), 'kyu:others', 't', '', "
            "'running', now(), 0, 30, now(), now(), 'other-' || (g % 8), now(), now(), 1 "
            "FROM generate_series(1, 5000) AS g"
        )
        conn.execute("ANALYZE kyu_jobs")


#: The shape of the batched lease writes as of this test's writing (a fix may change the
#: real statements; this one only checks how the planner orders such a join here).
BATCHED_UPDATE = """
UPDATE kyu_jobs AS j
SET heartbeat_at = %(now)s
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS t(id, attempt)
WHERE j.id = t.id AND j.attempt = t.attempt AND j.status = 'running' AND j.locked_by = %(worker)s
"""


def plan_follows_array_order(dsn: str, worker: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        plan = conn.execute(
            "EXPLAIN " + BATCHED_UPDATE,
            {"ids": [uuid.uuid4(), uuid.uuid4()], "attempts": [1, 1], "worker": worker,
             "now": datetime.now(UTC)},
        ).fetchall()  # fmt: skip
    lines = [row[0] for row in plan]
    # Nested Loop whose outer side is the unnest(): rows are locked in array order.
    return len(lines) > 2 and "Nested Loop" in lines[1] and "Function Scan" in lines[2]


@pytest.fixture
def race_db(fault_pg: ThrowawayPostgres) -> Iterator[str]:
    """A database of this test's own on the suite's server (its rows skew the planner)."""
    name = f"kyu_race_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(fault_pg.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield fault_pg.dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(fault_pg.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class FailsOnce(MemoryStore):
    """A store whose first ``complete_jobs`` call fails, as a deadlock or a dropped
    connection would make it (nothing is written)."""

    def __init__(self) -> None:
        super().__init__()
        self.complete_calls = 0

    async def complete_jobs(self, leases: Sequence[Lease], worker_id: str, now: Any) -> list[str]:
        self.complete_calls += 1
        if self.complete_calls == 1:
            await trio.lowlevel.checkpoint()
            raise KyuConnectionError("PostgreSQL at db:5432 is unreachable: deadlock detected")
        return await super().complete_jobs(leases, worker_id, now)


async def test_a_failed_completion_write_is_retried(autojump_clock: Any) -> None:
    store = FailsOnce()
    queue = Queue(
        Config(workers=1, metrics_port=0, stale_job_timeout=60.0, reaper_interval=600.0),
        store=store, broker=MemoryBroker(), clock=TrioClock(),
    )  # fmt: skip
    runs: list[str] = []

    @queue.handler("t")
    async def t(payload: str) -> None:
        runs.append(payload)

    async with queue:
        job_id = await queue.enqueue("t", "x", max_retries=0)
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert runs == ["x"]
    assert store.complete_calls >= 2, "the failed write was not retried"
    assert job.status is JobStatus.COMPLETED, job
