"""Snooze and per-handler backoff on real PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from kyu_trio import Config, Job, JobStatus, Queue, Snooze, current_job

pytestmark = pytest.mark.integration


async def _until(queue: Queue, job_id: str, *statuses: JobStatus) -> Job:
    with trio.fail_after(20):
        while True:
            await queue.run_once()
            job = await queue.inspect(job_id)
            if job.status in statuses:
                return job
            await trio.sleep(0.02)


async def test_a_snooze_keeps_retry_count_and_runs_the_job_again_at_the_snoozed_time(
    make_config: Callable[..., Config],
) -> None:
    queue = Queue(make_config())
    started: list[datetime] = []

    @queue.handler("poll")
    async def poll(payload: None) -> str:
        started.append(datetime.now(UTC))
        if len(started) == 1:
            raise Snooze(0.5)
        return f"ran at attempt {current_job().attempt}"

    async with queue:
        job_id = await queue.enqueue("poll", None, max_retries=0)
        snoozed = await _until(queue, job_id, JobStatus.SCHEDULED, JobStatus.DEAD)
        assert snoozed.retry_count == 0
        # Due 0.5 s after the run ended (the worker's clock, when it decided).
        assert started[0] + timedelta(seconds=0.5) <= snoozed.scheduled_at
        assert snoozed.scheduled_at <= started[0] + timedelta(seconds=1.5)
        done = await _until(queue, job_id, JobStatus.COMPLETED, JobStatus.DEAD)
    assert (done.status, done.retry_count, done.result) == (
        JobStatus.COMPLETED,
        0,
        "ran at attempt 2",
    )
    assert started[1] >= snoozed.scheduled_at  # not before its time
    assert [(a.outcome, a.error) for a in done.attempts] == [
        ("snoozed", "Snooze: snoozed for 0.5s"),
        ("completed", None),
    ]


async def test_max_snoozes_counts_the_snoozes_kept_in_postgresql(
    make_config: Callable[..., Config],
) -> None:
    queue = Queue(make_config())

    @queue.handler("poll", max_snoozes=2)
    async def poll(payload: None) -> None:
        raise Snooze(0.05)

    async with queue:
        job_id = await queue.enqueue("poll", None, max_retries=0)
        job = await _until(queue, job_id, JobStatus.DEAD)
    assert [a.outcome for a in job.attempts] == ["snoozed", "snoozed", "dead"]
    assert job.error_message == "Snooze: snoozed more than max_snoozes=2 times"


async def test_a_custom_backoff_sets_each_retry_due_time(
    make_config: Callable[..., Config],
) -> None:
    queue = Queue(make_config(max_backoff=3600.0))
    failed_at: list[datetime] = []

    @queue.handler("flaky", backoff=lambda attempt: 0.3 * attempt)
    async def flaky(payload: None) -> None:
        failed_at.append(datetime.now(UTC))
        raise RuntimeError("down")

    async with queue:
        job_id = await queue.enqueue("flaky", None, max_retries=2)
        for n in (1, 2):
            job = await _until(queue, job_id, JobStatus.FAILED, JobStatus.DEAD)
            assert job.retry_count == n
            delay = (job.scheduled_at - failed_at[-1]).total_seconds()
            assert 0.3 * n <= delay < 0.3 * n + 0.5, delay  # not the queue's 1 s, 2 s
            await trio.sleep(0.3 * n)
        job = await _until(queue, job_id, JobStatus.DEAD)
    assert [a.outcome for a in job.attempts] == ["failed", "failed", "dead"]


def test_the_snooze_and_backoff_example(run_example: Any) -> None:
    """examples/snooze_and_backoff.py, shown in docs/how-to/snooze-and-backoff.md."""
    proc = run_example("snooze_and_backoff.py")
    assert "attempt 1: snoozed Snooze: snoozed for 0.2s" in proc.stdout
    assert "attempt 1: failed ConnectionError: partner API down (call 1)" in proc.stdout
    assert "OK: snooze and backoff did what they say" in proc.stdout
