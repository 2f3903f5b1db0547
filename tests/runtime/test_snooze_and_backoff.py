"""Snooze and per-handler backoff through the runtime, on the in-memory adapters under
MockClock: due times are exact, so the tests compare them with ``==``."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
import trio

from kyu_trio import Config, ConfigError, InvalidJobError, JobStatus, Snooze, TrioClock
from kyu_trio.testing import drain, memory_queue


async def test_a_snooze_keeps_retry_count_and_runs_the_job_at_the_snoozed_time(
    autojump_clock: Any,
) -> None:
    clock = TrioClock()
    queue = memory_queue(clock=clock)
    runs: list[datetime] = []

    @queue.handler("poll")
    async def poll(payload: None) -> str:
        runs.append(clock.now())
        if len(runs) == 1:
            raise Snooze(30)
        return "ready"

    async with queue:
        job_id = await queue.enqueue("poll", None, max_retries=0)
        summary = await queue.run_once()
        assert (summary.snoozed, summary.failed, summary.dead) == (1, 0, 0)
        job = await queue.inspect(job_id)
        assert (job.status, job.retry_count) == (JobStatus.SCHEDULED, 0)
        assert job.scheduled_at == runs[0] + timedelta(seconds=30)
        await trio.sleep(29.999)
        assert await drain(queue) == []  # not due yet
        await trio.sleep(0.001)
        await drain(queue)
        job = await queue.inspect(job_id)
    # max_retries=0: a failure would have made it dead; a snooze spends no retry.
    assert (job.status, job.retry_count, job.result) == (JobStatus.COMPLETED, 0, "ready")
    assert runs[1] == runs[0] + timedelta(seconds=30)
    assert [(a.outcome, a.error) for a in job.attempts] == [
        ("snoozed", "Snooze: snoozed for 30.0s"),
        ("completed", None),
    ]


async def test_a_snooze_beyond_max_snoozes_is_a_failure(autojump_clock: Any) -> None:
    queue = memory_queue()

    @queue.handler("poll", max_snoozes=2)
    async def poll(payload: None) -> None:
        raise Snooze(1)

    async with queue:
        job_id = await queue.enqueue("poll", None, max_retries=1)
        for _ in range(4):
            await drain(queue)
            await trio.sleep(10)
        job = await queue.inspect(job_id)
    message = "Snooze: snoozed more than max_snoozes=2 times"
    assert [(a.outcome, a.error) for a in job.attempts] == [
        ("snoozed", "Snooze: snoozed for 1.0s"),
        ("snoozed", "Snooze: snoozed for 1.0s"),
        ("failed", message),  # a failure spends a retry ...
        ("dead", message),  # ... and dies once none is left
    ]
    assert (job.status, job.retry_count, job.error_message) == (JobStatus.DEAD, 1, message)


async def test_max_snoozes_zero_makes_every_snooze_a_failure(autojump_clock: Any) -> None:
    queue = memory_queue()

    @queue.handler("poll", max_snoozes=0)
    async def poll(payload: None) -> None:
        raise Snooze(5)

    async with queue:
        job_id = await queue.enqueue("poll", None, max_retries=0)
        await drain(queue)
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.DEAD
    assert job.error_message == "Snooze: snoozed more than max_snoozes=0 times"


async def test_a_custom_backoff_sets_the_due_time_of_each_retry_exactly(
    autojump_clock: Any,
) -> None:
    clock = TrioClock()
    queue = memory_queue(clock=clock)
    asked: list[int] = []
    failed_at: list[datetime] = []

    def linear(attempt: int) -> float:
        asked.append(attempt)
        return 7.5 * attempt

    @queue.handler("flaky", backoff=linear)
    async def flaky(payload: None) -> None:
        failed_at.append(clock.now())
        raise RuntimeError(f"try {len(failed_at)}")

    async with queue:
        job_id = await queue.enqueue("flaky", None, max_retries=3)
        dues: list[datetime] = []
        for n in (1, 2, 3):
            await drain(queue)
            job = await queue.inspect(job_id)
            assert (job.status, job.retry_count) == (JobStatus.FAILED, n)
            dues.append(job.scheduled_at)
            await trio.sleep(7.5 * n)
        await drain(queue)
        job = await queue.inspect(job_id)
    assert asked == [1, 2, 3]  # not asked for the last run: no retry left
    assert dues == [failed_at[n - 1] + timedelta(seconds=7.5 * n) for n in (1, 2, 3)]
    # Each retry ran exactly when due.
    assert failed_at[1:] == dues
    assert job.status is JobStatus.DEAD


@pytest.mark.parametrize("answer", [-1.0, float("nan"), "5", None, 1e12])
async def test_a_bad_backoff_falls_back_to_the_queue_policy_with_an_error_logged(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture, answer: Any
) -> None:
    clock = TrioClock()
    queue = memory_queue(Config(max_backoff=60.0), clock=clock)

    @queue.handler("flaky", backoff=lambda attempt: answer)
    async def flaky(payload: None) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        async with queue:
            job_id = await queue.enqueue("flaky", None, max_retries=1)
            now = clock.now()
            await drain(queue)
            job = await queue.inspect(job_id)
    assert job.status is JobStatus.FAILED
    assert job.scheduled_at == now + timedelta(seconds=1)  # the queue's first backoff
    assert any(
        "the backoff of job type 'flaky' failed for attempt 1" in r.getMessage()
        for r in caplog.records
    )


async def test_a_backoff_that_raises_falls_back_too(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = TrioClock()
    queue = memory_queue(clock=clock)

    def broken(attempt: int) -> float:
        raise ZeroDivisionError("oops")

    async def flaky(payload: None) -> None:
        raise RuntimeError("boom")

    queue.register("flaky", flaky, backoff=broken)
    with caplog.at_level(logging.ERROR):
        async with queue:
            job_id = await queue.enqueue("flaky", None, max_retries=1)
            now = clock.now()
            await drain(queue)
            job = await queue.inspect(job_id)
    assert job.scheduled_at == now + timedelta(seconds=1)
    [record] = [r for r in caplog.records if "backoff" in r.getMessage()]
    assert "ZeroDivisionError: oops" in record.getMessage()
    assert record.exc_info is not None


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan"), True, "5", 1e12])
def test_snooze_refuses_a_bad_number_of_seconds(seconds: Any) -> None:
    with pytest.raises(InvalidJobError, match=r"Snooze\(seconds\) needs"):
        Snooze(seconds)


def test_register_checks_max_snoozes_and_backoff() -> None:
    queue = memory_queue(Config(max_attempts_kept=10))

    async def async_backoff(attempt: int) -> float:
        return 1.0

    with pytest.raises(ConfigError, match="max_snoozes=10 must be below"):
        queue.register("t", print, max_snoozes=10)
    with pytest.raises(ConfigError, match="max_snoozes must be None"):
        queue.register("t", print, max_snoozes=-1)
    with pytest.raises(ConfigError, match="backoff must be a plain"):
        queue.register("t", print, backoff=async_backoff)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backoff must be a plain"):
        queue.register("t", print, backoff=5)  # type: ignore[arg-type]
    queue.register("t", print, max_snoozes=9, backoff=lambda attempt: 1.0)


async def test_a_snooze_from_a_handlers_nursery_is_a_snooze(autojump_clock: Any) -> None:
    clock = TrioClock()
    queue = memory_queue(clock=clock)

    async def check(seconds: float) -> None:
        raise Snooze(seconds)

    @queue.handler("poll")
    async def poll(payload: None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(check, 5)
            nursery.start_soon(check, 8)

    @queue.handler("mixed")
    async def mixed(payload: None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(check, 5)
            raise KeyError("other")

    async with queue:
        now = clock.now()
        polled = await queue.enqueue("poll", None, max_retries=0)
        mixed_id = await queue.enqueue("mixed", None, max_retries=0)
        await queue.run_once()
        job = await queue.inspect(polled)
        other = await queue.inspect(mixed_id)
    assert (job.status, job.scheduled_at) == (JobStatus.SCHEDULED, now + timedelta(seconds=8))
    assert other.status is JobStatus.DEAD  # a real error among them: a failure
