"""The operations API the CLI is built on: retry, list, stats, purge."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from kyu_trio import JobNotFound, JobStatus, KyuError, Queue

pytestmark = pytest.mark.integration


async def test_retry_dead_job_resets_and_pushes(
    real_queue: Queue, redis_client: redis.Redis
) -> None:
    job_id = await real_queue.enqueue("nobody", "", max_retries=0)
    await real_queue.run_once()
    assert (await real_queue.inspect(job_id)).status is JobStatus.DEAD
    assert await real_queue.retry_job(job_id) is True
    job = await real_queue.inspect(job_id)
    assert (job.status, job.retry_count) == (JobStatus.PENDING, 0)
    assert redis_client.zscore(real_queue.config.queue_name, job_id) is not None
    assert await real_queue.retry_job(job_id) is False  # pending: nothing to retry
    with pytest.raises(JobNotFound):
        await real_queue.retry_job("00000000-0000-0000-0000-000000000000")


async def test_retry_all_dead(real_queue: Queue) -> None:
    ids = [await real_queue.enqueue("nobody", str(i), max_retries=0) for i in range(3)]
    await real_queue.run_once()
    assert await real_queue.retry_dead_jobs() == 3
    assert {(await real_queue.inspect(i)).status for i in ids} == {JobStatus.PENDING}
    assert await real_queue.dead_jobs() == []


async def test_list_jobs_filters_newest_first(real_queue: Queue) -> None:
    a = await real_queue.enqueue("a", "1")
    b = await real_queue.enqueue("b", "2")
    await real_queue.cancel_job(a)
    assert [j.id for j in await real_queue.list_jobs()] == [b, a]
    assert [j.id for j in await real_queue.list_jobs(status="cancelled")] == [a]
    assert [j.id for j in await real_queue.list_jobs(job_type="b")] == [b]
    assert [j.id for j in await real_queue.list_jobs(limit=1)] == [b]
    with pytest.raises(KyuError, match="unknown status"):
        await real_queue.list_jobs(status="bogus")


async def test_stats_and_purge(real_queue: Queue) -> None:
    @real_queue.handler("ok")
    async def ok(payload: str) -> None:
        pass

    for _ in range(3):
        await real_queue.enqueue("ok", "")
    waiting = await real_queue.enqueue("ok", "", scheduled_at=None)
    await real_queue.run_once()
    later = await real_queue.enqueue("ok", "")
    stats = await real_queue.stats()
    assert stats.counts[JobStatus.COMPLETED] == 4
    assert stats.counts[JobStatus.PENDING] == 1
    assert stats.depth == 1
    assert stats.completed_last_minute == 4
    assert stats.lag_seconds >= 0
    assert await real_queue.purge(timedelta(hours=1)) == 0
    assert await real_queue.purge(timedelta(0)) == 4
    assert (await real_queue.inspect(later)).status is JobStatus.PENDING
    with pytest.raises(JobNotFound):
        await real_queue.inspect(waiting)
    with pytest.raises(KyuError):
        await real_queue.purge(timedelta(0), statuses=["pending"])
