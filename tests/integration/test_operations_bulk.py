"""Deleting jobs, the bulk calls (retry, cancel, delete many jobs in one statement) and
running a cron entry now, against real PostgreSQL and Redis, through `Queue`, `Client`
and `AsyncioClient` (what the web dashboard calls)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
import trio

from kyu_trio import (
    AsyncioClient,
    Client,
    Config,
    CronEntryNotFound,
    JobFailed,
    JobNotFound,
    JobStatus,
    KyuError,
    Queue,
    current_job,
)

pytestmark = pytest.mark.integration


def attempt_rows(pg_dsn: str, ids: list[str]) -> int:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM kyu_attempts WHERE job_id = ANY(%s::uuid[])", (ids,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def one_of_each(queue: Queue) -> dict[str, str]:
    """A job in every state but running, through the queue's own calls: status -> id."""

    @queue.handler("ok")
    async def ok(payload: Any) -> None:
        pass

    @queue.handler("boom")
    async def boom(payload: Any) -> None:
        raise RuntimeError("boom")

    done = await queue.enqueue("ok")
    dead = await queue.enqueue("boom", max_retries=0)
    failed = await queue.enqueue("boom", max_retries=5)
    await queue.run_once()
    ids = {
        "completed": done,
        "dead": dead,
        "failed": failed,
        "pending": await queue.enqueue("ok"),
        "scheduled": await queue.enqueue("ok", scheduled_at=datetime.now(UTC) + timedelta(hours=1)),
        "cancelled": await queue.enqueue("ok"),
    }
    await queue.cancel_job(ids["cancelled"])
    for status, job_id in ids.items():
        assert (await queue.inspect(job_id)).status.value == status
    return ids


async def test_bulk_calls_change_what_the_single_calls_would(
    real_queue: Queue, redis_client: redis.Redis, pg_dsn: str
) -> None:
    queue, name = real_queue, real_queue.config.queue_name
    ids = await one_of_each(queue)
    unknown, garbage = str(uuid.uuid4()), "not-a-job-id"

    # Retry: the dead and failed ones, pushed to Redis; unknown and malformed ids ignored.
    assert await queue.retry_jobs([*ids.values(), unknown, garbage]) == 2
    for status in ("dead", "failed"):
        job = await queue.inspect(ids[status])
        assert (job.status, job.retry_count) == (JobStatus.PENDING, 0)
        assert redis_client.zscore(name, ids[status]) is not None
    assert await queue.retry_jobs([ids["dead"], ids["dead"].upper()]) == 0  # pending now

    # Cancel: every unfinished one (pending, scheduled, the two retried), out of Redis.
    assert await queue.cancel_jobs([*ids.values(), unknown]) == 4
    for status, job_id in ids.items():
        want = "completed" if status == "completed" else "cancelled"
        assert (await queue.inspect(job_id)).status.value == want
        assert redis_client.zscore(name, job_id) is None
    assert await queue.cancel_jobs(list(ids.values())) == 0  # finished: nothing to do

    # Delete: all of them (none runs), with their attempt history.
    assert attempt_rows(pg_dsn, [ids["dead"], ids["failed"]]) == 2
    assert await queue.delete_jobs([*ids.values(), unknown, garbage]) == len(ids)
    for job_id in ids.values():
        with pytest.raises(JobNotFound):
            await queue.inspect(job_id)
    assert attempt_rows(pg_dsn, list(ids.values())) == 0
    assert await queue.delete_jobs(list(ids.values())) == 0
    assert await queue.retry_jobs([]) == await queue.cancel_jobs([]) == 0

    # At most 10,000 ids per call, and a list of str: the usual KyuError.
    many = [str(uuid.uuid4()) for _ in range(10_000)]
    assert await queue.delete_jobs(many) == 0
    for call in (queue.retry_jobs, queue.cancel_jobs, queue.delete_jobs):
        with pytest.raises(KyuError, match="at most 10000 job ids per call, got 10001"):
            await call([*many, unknown])
        with pytest.raises(KyuError, match="job_ids must be a list"):
            await call(unknown)
        with pytest.raises(KyuError, match="job ids are UUID strings, got int"):
            await call([unknown, 42])  # type: ignore[list-item]


async def test_delete_job(real_queue: Queue, redis_client: redis.Redis) -> None:
    queue, name = real_queue, real_queue.config.queue_name
    job_id = await queue.enqueue("ok", {"n": 1})
    assert redis_client.zscore(name, job_id) is not None
    assert await queue.delete_job(job_id) is True
    assert redis_client.zscore(name, job_id) is None
    with pytest.raises(JobNotFound):
        await queue.inspect(job_id)
    with pytest.raises(JobNotFound):
        await queue.delete_job(job_id)
    with pytest.raises(JobNotFound):
        await queue.delete_job("not-a-job-id")


async def test_a_running_job_is_cancelled_by_cancel_jobs_and_never_deleted(
    make_config: Callable[..., Config], redis_client: redis.Redis
) -> None:
    queue = Queue(make_config(heartbeat_interval=0.5, stale_job_timeout=5.0))
    started, stopped = trio.Event(), trio.Event()
    runs: list[str] = []

    @queue.handler("hold")
    async def hold(payload: Any) -> None:
        runs.append(current_job().id)
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            stopped.set()

    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        job_id = await queue.enqueue("hold")
        with trio.fail_after(10):
            await started.wait()
        # Running: delete refuses it, one by one or in bulk, and the handler runs on.
        assert await queue.delete_job(job_id) is False
        assert await queue.delete_jobs([job_id]) == 0
        assert (await queue.inspect(job_id)).status is JobStatus.RUNNING
        assert not stopped.is_set()

        waiting = trio.Event()
        outcome: list[BaseException] = []

        async def wait_for_result() -> None:
            waiting.set()
            try:
                await queue.result(job_id)
            except JobFailed as exc:
                outcome.append(exc)

        nursery.start_soon(wait_for_result)
        await waiting.wait()
        assert await queue.cancel_jobs([job_id, str(uuid.uuid4())]) == 1
        with trio.fail_after(5):
            await stopped.wait()  # the holding worker cancelled the handler
        job = await queue.inspect(job_id)
        assert job.status is JobStatus.CANCELLED
        assert [a.outcome for a in job.attempts] == ["cancelled"]
        with trio.fail_after(5):
            while not outcome:  # noqa: ASYNC110 - woken by the worker's pub/sub message
                await trio.sleep(0.01)
        assert "ended cancelled" in str(outcome[0])
        # Cancelled, it can be deleted.
        assert await queue.delete_job(job_id) is True
        await trio.sleep(1.0)  # a retry, had one been scheduled, would have started
        assert runs == [job_id]
        queue.shutdown()


async def test_clients_bulk_calls(make_config: Callable[..., Config], pg_dsn: str) -> None:
    """`Client` and `AsyncioClient` run the same statements as `Queue`."""
    config = make_config()
    async with Queue(config) as queue:
        ids = await one_of_each(queue)

    def with_client() -> None:
        with Client(config) as client:
            assert client.retry_jobs([ids["dead"], str(uuid.uuid4())]) == 1
            assert client.inspect(ids["dead"]).status is JobStatus.PENDING
            assert client.cancel_jobs([ids["dead"], ids["completed"]]) == 1
            assert client.delete_job(ids["dead"]) is True
            with pytest.raises(JobNotFound):
                client.delete_job(ids["dead"])
            with pytest.raises(KyuError, match="at most 10000"):
                client.delete_jobs(["x"] * 10_001)

    async def with_asyncio_client() -> None:
        async with AsyncioClient(config) as client:
            assert await client.retry_jobs([ids["failed"]]) == 1
            assert await client.cancel_jobs([ids["failed"], ids["pending"]]) == 2
            assert await client.delete_jobs(list(ids.values())) == len(ids) - 1
            with pytest.raises(JobNotFound):
                await client.delete_job(ids["pending"])
            with pytest.raises(KyuError, match="at most 10000"):
                await client.retry_jobs(["x"] * 10_001)

    await trio.to_thread.run_sync(with_client)
    await trio.to_thread.run_sync(asyncio.run, with_asyncio_client())
    assert attempt_rows(pg_dsn, list(ids.values())) == 0


async def test_run_cron_now_runs_a_job_and_leaves_the_schedule_alone(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(leader_interval=1.0, scheduler_interval=0.2)
    queue = Queue(config)
    runs: list[tuple[str, Any, int]] = []

    # Once a year: no tick falls during the test.
    @queue.periodic("0 0 1 1 *", "report", {"full": True}, name="yearly", priority=3)
    async def report(payload: Any) -> str:
        job = current_job()
        runs.append((job.id, payload, job.priority))
        return "done"

    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        with trio.fail_after(10):
            while not await queue.cron_entries():  # noqa: ASYNC110 - written by the leader
                await trio.sleep(0.05)
        [before] = await queue.cron_entries()

        job_id = await queue.run_cron_now("yearly")
        with trio.fail_after(10):
            assert await queue.result(job_id) == "done"

        def with_client() -> str:
            with Client(config) as client:
                with pytest.raises(CronEntryNotFound, match="no cron entry named 'nope'"):
                    client.run_cron_now("nope")
                return client.run_cron_now("yearly")

        async def with_asyncio_client() -> str:
            async with AsyncioClient(config) as client:
                with pytest.raises(CronEntryNotFound):
                    await client.run_cron_now("nope")
                return await client.run_cron_now("yearly")

        by_client = await trio.to_thread.run_sync(with_client)
        by_asyncio = await trio.to_thread.run_sync(asyncio.run, with_asyncio_client())
        with trio.fail_after(10):
            for other in (by_client, by_asyncio):
                assert await queue.result(other) == "done"
        with pytest.raises(CronEntryNotFound, match="`kyu-trio cron` lists"):
            await queue.run_cron_now("nope")

        assert runs == [(i, {"full": True}, 3) for i in (job_id, by_client, by_asyncio)]
        job = await queue.inspect(job_id)
        assert (job.job_type, job.max_retries, job.job_timeout) == ("report", 3, 30.0)
        # The schedule goes on as before: the entry's row is untouched.
        assert await queue.cron_entries() == [before]
        queue.shutdown()
