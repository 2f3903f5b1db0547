"""Results and attempt history through the runtime on the in-memory store (no servers,
MockClock): the same behaviour the PostgreSQL tests check, at unit-test speed."""

from __future__ import annotations

from typing import Any

import trio

from kyu_trio import Job, JobStatus
from kyu_trio._runtime._handlers import CallNext
from kyu_trio.testing import drain, memory_queue


async def test_a_result_passes_middleware_that_does_not_return_it(autojump_clock: Any) -> None:
    queue = memory_queue()
    seen: list[str] = []

    async def old_style(job: Job, call_next: CallNext) -> None:
        seen.append(job.job_type)
        await call_next()  # written before results existed: returns nothing

    queue.use(old_style)

    @queue.handler("double")
    async def double(payload: dict[str, int]) -> dict[str, int]:
        return {"n": payload["n"] * 2}

    async with queue:
        job_id = await queue.enqueue("double", {"n": 21})
        await drain(queue)
        job = await queue.inspect(job_id)
    assert seen == ["double"]
    assert (job.status, job.result) == (JobStatus.COMPLETED, {"n": 42}), job.error_message


async def test_failures_then_completion_in_memory(autojump_clock: Any) -> None:
    queue = memory_queue()
    calls = 0

    @queue.handler("flaky")
    async def flaky_in_memory(payload: None) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise KeyError(f"missing {calls}")
        return "ok"

    async with queue:
        job_id = await queue.enqueue("flaky", None, max_retries=3)
        for _ in range(3):
            await drain(queue)
            await trio.sleep(3600)
        job = await queue.inspect(job_id)
        listed = await queue.list_jobs()
    assert job.result == "ok"
    assert [(a.outcome, a.error) for a in job.attempts] == [
        ("failed", "KeyError: 'missing 1'"),
        ("failed", "KeyError: 'missing 2'"),
        ("completed", None),
    ]
    assert all("flaky_in_memory" in (a.traceback or "") for a in job.attempts[:2])
    assert [j.attempts for j in listed] == [()]


async def test_an_unstorable_result_is_a_dead_job_in_memory(autojump_clock: Any) -> None:
    queue = memory_queue()

    @queue.handler("t")
    async def t(payload: None) -> Any:
        return {1, 2}

    async with queue:
        job_id = await queue.enqueue("t", None)
        await drain(queue)
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.DEAD
    assert job.error_message is not None
    assert job.error_message.startswith("ResultError: a handler's result must be a JSON value")
