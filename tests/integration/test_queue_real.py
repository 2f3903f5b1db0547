"""The Queue against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
import trio

from kyu_trio import Config, JobNotFound, JobStatus, Queue, current_job
from kyu_trio._store._postgres import SCHEMA_VERSION

pytestmark = pytest.mark.integration


async def test_lifecycle_with_three_kinds_of_handlers(make_config: Callable[..., Config]) -> None:
    queue = Queue(make_config())
    seen: dict[str, tuple[str, str]] = {}

    @queue.handler("async")
    async def async_handler(payload: str) -> None:
        seen["async"] = (payload, current_job().job_type)

    @queue.handler("sync")
    def sync_handler(payload: str) -> None:
        assert threading.current_thread() is not threading.main_thread()
        seen["sync"] = (payload, current_job().job_type)

    async def asyncio_handler(payload: str) -> None:
        await asyncio.sleep(0.01)
        asyncio.get_running_loop()  # really inside asyncio
        seen["asyncio"] = (payload, current_job().job_type)

    queue.register("asyncio", asyncio_handler, asyncio=True)

    @queue.handler("fails")
    async def fails(payload: str) -> None:
        raise ValueError("bad payload")

    async with queue:
        ids = {
            kind: await queue.enqueue(kind, f"payload-{kind}", max_retries=0)
            for kind in ("async", "sync", "asyncio", "fails")
        }
        await queue.run_once()
        jobs = {kind: await queue.inspect(job_id) for kind, job_id in ids.items()}
        dead = await queue.dead_jobs()
    assert seen == {k: (f"payload-{k}", k) for k in ("async", "sync", "asyncio")}
    for kind in ("async", "sync", "asyncio"):
        assert jobs[kind].status is JobStatus.COMPLETED
        assert jobs[kind].completed_at is not None
    assert jobs["fails"].status is JobStatus.DEAD
    assert jobs["fails"].error_message == "ValueError: bad payload"
    assert [j.id for j in dead] == [ids["fails"]]


async def test_retry_goes_through_failed_then_completes(make_config: Callable[..., Config]) -> None:
    queue = Queue(make_config())

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        if current_job().retry_count == 0:
            raise RuntimeError("first try fails")

    async with queue:
        job_id = await queue.enqueue("flaky", "")
        await queue.run_once()
        job = await queue.inspect(job_id)
        assert job.status is JobStatus.FAILED
        # Due 1 s after the failure (updated_at is the later moment the batch was written).
        delay = (job.scheduled_at - job.updated_at).total_seconds()
        assert 0.8 < delay <= 1.0
        await trio.sleep(1.1)
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.COMPLETED
    assert job.retry_count == 1
    assert job.error_message == "RuntimeError: first try fails"


async def test_priority_and_fifo_on_real_servers(make_config: Callable[..., Config]) -> None:
    queue = Queue(make_config(workers=1))
    order: list[str] = []

    @queue.handler("t")
    async def record(payload: str) -> None:
        order.append(payload)

    priorities = [(i * 7) % 5 - 2 for i in range(200)]
    async with queue:
        for i, p in enumerate(priorities):
            await queue.enqueue("t", f"{p}:{i}", priority=p)
        await queue.run_once()
    expected = [f"{p}:{i}" for i, p in sorted(enumerate(priorities), key=lambda x: (-x[1], x[0]))]
    assert order == expected


async def test_inspect_cancel_and_ids(
    real_queue: Queue, make_config: Callable[..., Config]
) -> None:
    job_id = await real_queue.enqueue("t", "x")
    other = Queue(make_config(queue_name="kyu:test-other-queue"))
    async with other:
        # inspect finds a job of any queue
        assert (await other.inspect(job_id)).queue == real_queue.config.queue_name
    with pytest.raises(JobNotFound):
        await real_queue.inspect("00000000-0000-0000-0000-000000000000")
    with pytest.raises(JobNotFound, match="not a job id"):
        await real_queue.inspect("'); DROP TABLE kyu_jobs; --")
    with pytest.raises(JobNotFound):
        await real_queue.cancel_job("00000000-0000-0000-0000-000000000000")
    assert await real_queue.cancel_job(job_id) is True
    assert await real_queue.cancel_job(job_id) is False
    assert (await real_queue.inspect(job_id)).status is JobStatus.CANCELLED


async def test_scheduled_job_is_not_in_redis_until_due(
    real_queue: Queue, redis_client: redis.Redis
) -> None:
    name = real_queue.config.queue_name
    due = datetime.now(UTC) + timedelta(seconds=1)
    job_id = await real_queue.enqueue("t", "", scheduled_at=due)
    assert (await real_queue.inspect(job_id)).status is JobStatus.SCHEDULED
    assert redis_client.zscore(name, job_id) is None
    await trio.sleep(1.1)
    await real_queue.run_once()  # no handler: it fails, but it was promoted and claimed
    job = await real_queue.inspect(job_id)
    assert job.attempt == 1
    assert job.error_message == "UnknownJobType: no handler registered for 't'"


async def test_reconnect_after_close_and_across_trio_runs(
    make_config: Callable[..., Config],
) -> None:
    queue = Queue(make_config())
    async with queue:
        first = await queue.enqueue("t", "1")
    async with queue:
        assert (await queue.inspect(first)).payload == "1"

    def another_run() -> str:
        async def main() -> str:
            async with queue:
                job_id = await queue.enqueue("t", "2")
                return (await queue.inspect(job_id)).payload

        return trio.run(main)

    assert await trio.to_thread.run_sync(another_run) == "2"


async def test_concurrent_connects_migrate_once(pg_dsn: str, redis_url: str) -> None:
    # A brand-new database, ten queues connecting at once: the advisory lock serialises them.
    admin = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    fresh = f"{admin['dbname']}_mig"
    admin_dsn = psycopg.conninfo.make_conninfo(**{**admin, "dbname": "postgres"})
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{fresh}"')
    dsn = psycopg.conninfo.make_conninfo(**{**admin, "dbname": fresh})
    try:
        queues = [Queue(Config(dsn=dsn, redis_url=redis_url, metrics_port=0)) for _ in range(10)]
        async with trio.open_nursery() as nursery:
            for q in queues:
                nursery.start_soon(q.connect)
        for q in queues:
            await q.close()
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT version FROM kyu_schema_version ORDER BY 1").fetchall()
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each applied once
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("name", "sql", "index"),
    [
        ("scheduler", "promote", "kyu_jobs_due_idx"),
        ("reaper", "rescue", "kyu_jobs_running_idx"),
        ("resync", "pending", "kyu_jobs_pending_idx"),
        ("dead", "dead", "kyu_jobs_dead_idx"),
        ("claim", "claim", "kyu_jobs_pkey"),
    ],
)
async def test_maintenance_queries_use_their_index(
    real_queue: Queue, pg_dsn: str, name: str, sql: str, index: str
) -> None:
    from kyu_trio._store import _queries as q

    now = datetime.now(UTC)
    statements: dict[str, tuple[str, Any]] = {
        "promote": (q.PROMOTE_DUE, {"queue": "q", "now": now, "limit": 100}),
        "rescue": (
            q.STALE_JOBS,
            {"queue": "q", "now": now, "stale_before": now, "limit": 100},
        ),
        "pending": (q.PENDING_AFTER, ("q", 0, 100)),
        "dead": (q.DEAD_JOBS, ("q", 100)),
        "claim": (
            q.CLAIM_JOBS,
            {
                "ids": [str(uuid.uuid4()) for _ in range(50)],
                "queue": "q",
                "worker": "w",
                "now": now,
            },
        ),
    }
    text, params = statements[sql]
    with psycopg.connect(pg_dsn) as conn:
        # Planner statistics on a table with few rows favour seq scans; forbid them to
        # check that the index can serve the query at all.
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(("EXPLAIN " + text).encode(), params).fetchall()
        conn.rollback()
    assert index in "\n".join(r[0] for r in plan), name


async def test_promotion_reads_due_jobs_in_order_without_sorting_them(
    real_queue: Queue, pg_dsn: str
) -> None:
    # Each batch of the scheduler takes the 1,000 first due jobs: a Sort over every due
    # row of the queue made promoting 100,000 jobs due at one instant cost ~10 s (each
    # batch sorted them all again); kyu_jobs_due_idx holds them in promotion order.
    from kyu_trio._store import _queries as q

    params = {"queue": "q", "now": datetime.now(UTC), "limit": 1000}
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in conn.execute(("EXPLAIN " + q.PROMOTE_DUE).encode(), params).fetchall()
        )
        conn.rollback()
    assert "kyu_jobs_due_idx" in plan and "Sort" not in plan, plan


@pytest.mark.parametrize(
    "name",
    [
        "complete",
        "complete_with_results",
        "fail",
        "requeue",
        "heartbeat",
        "retry",
        "pending_among",
        "claim",
    ],
)
async def test_writes_by_id_fetch_rows_by_primary_key_only(
    real_queue: Queue, pg_dsn: str, name: str
) -> None:
    """A write that names its rows by id must reach them through the primary key, never
    through a partial index: kyu_jobs_running_idx (and _pending_idx) keep one dead entry
    per job that ever ran until VACUUM, so walking one made a 384-row completion take
    450 ms once a few thousand jobs had run."""
    from kyu_trio._store import _queries as q

    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(400)]
    attempts = [1] * len(ids)
    lease = {"ids": ids, "attempts": attempts, "worker": "w", "now": now}
    statements: dict[str, tuple[str, Any]] = {
        "complete": (q.COMPLETE_JOBS, lease),
        "complete_with_results": (
            q.COMPLETE_JOBS_WITH_RESULTS,
            {**lease, "results": "{" + ",".join(['"[1]"'] * len(ids)) + "}"},
        ),
        "fail": (
            q.FAIL_JOBS,
            {
                **lease,
                "statuses": ["failed"] * len(ids),
                "due": [now] * len(ids),
                "messages": ["x"] * len(ids),
                "outcomes": ["failed"] * len(ids),
                "tracebacks": ["tb"] * len(ids),
                "keep": 20,
            },
        ),
        "requeue": (q.REQUEUE_JOBS, {**lease, "keep": 20}),
        "heartbeat": (q.HEARTBEAT, lease),
        "retry": (q.RETRY_JOBS, {"ids": ids, "now": now}),
        "pending_among": (q.PENDING_AMONG, {"ids": ids, "queue": "q"}),
        "claim": (q.CLAIM_JOBS, {"ids": ids, "queue": "q", "worker": "w", "now": now}),
    }
    text, params = statements[name]
    with psycopg.connect(pg_dsn) as conn:
        # Forbid seq scans so that the planner must choose among the indexes; a partial
        # index whose predicate the query implies would then win on the cost of its
        # (apparently) few rows.
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(("EXPLAIN " + text).encode(), params))
        conn.rollback()
    used = set(re.findall(r"kyu_jobs_\w+", plan))
    assert used == {"kyu_jobs_pkey"}, plan


async def test_sync_handler_timeout_abandons_the_thread(make_config: Callable[..., Config]) -> None:
    queue = Queue(make_config())
    release = threading.Event()

    @queue.handler("blocking")
    def blocking(payload: str) -> None:
        release.wait(10)  # cannot be interrupted: the worker stops waiting for it

    async with queue:
        job_id = await queue.enqueue("blocking", "", job_timeout=0.3, max_retries=0)
        started = trio.current_time()
        await queue.run_once()
        elapsed = trio.current_time() - started
        job = await queue.inspect(job_id)
    release.set()
    assert elapsed < 5
    assert job.status is JobStatus.DEAD
    assert job.error_message == "TimeoutError: timed out after 0.3s"
