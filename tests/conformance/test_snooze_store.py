"""A snooze through the store's fenced failure write, on MemoryStore and PostgresStore."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kyu_trio import JobStatus
from kyu_trio._ports import Failure, Lease

from .test_store import T0, new


async def test_a_snooze_schedules_the_job_without_spending_a_retry(
    store: Any, queue_name: str
) -> None:
    job = new(queue_name, retries=1)
    await store.insert_jobs([job], T0)
    [c1] = await store.claim_jobs(queue_name, [job.id], "w1", T0)
    failed = Failure(Lease(job.id, c1.attempt), JobStatus.FAILED, "E: 1", T0)
    assert await store.fail_jobs([failed], "w1", T0) == [job.id]
    await store.promote_due(queue_name, T0, 10)
    [c2] = await store.claim_jobs(queue_name, [job.id], "w2", T0)
    due = T0 + timedelta(seconds=30)
    snooze = Failure(Lease(job.id, c2.attempt), JobStatus.SCHEDULED, "Snooze: 30s", due)
    assert snooze.outcome == "snoozed"
    # Fenced like every outcome: a stale lease or another worker writes nothing.
    assert await store.fail_jobs([snooze], "w1", T0) == []
    assert (
        await store.fail_jobs([Failure(Lease(job.id, 1), JobStatus.SCHEDULED, "x", due)], "w2", T0)
        == []
    )
    assert await store.fail_jobs([snooze], "w2", T0) == [job.id]
    got = await store.get_job(job.id)
    # retry_count unchanged, and the job keeps its last error (a snooze is none).
    assert (got.status, got.retry_count, got.error_message) == (JobStatus.SCHEDULED, 1, "E: 1")
    assert got.scheduled_at == due
    assert [(a.attempt, a.outcome, a.error) for a in got.attempts] == [
        (1, "failed", "E: 1"),
        (2, "snoozed", "Snooze: 30s"),
    ]
    assert await store.promote_due(queue_name, due - timedelta(microseconds=1), 10) == []
    assert await store.claim_jobs(queue_name, [job.id], "w3", T0) == []  # not due yet
    [c3] = await store.claim_jobs(queue_name, [job.id], "w3", due)
    assert (c3.attempt, c3.retry_count) == (3, 1)
