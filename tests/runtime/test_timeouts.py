"""A job's timeout cancels its handler at exactly ``job_timeout`` after it started, whether
the deadline is set when the job starts (short timeouts) or armed while it runs."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from kyu_trio import JobStatus
from kyu_trio._runtime._pool import ARM_PERIOD

from .conftest import Harness


@pytest.mark.parametrize("job_timeout", [0.3, 2 * ARM_PERIOD, 2 * ARM_PERIOD + 0.01, 10.0, 3600.0])
async def test_a_handler_is_cancelled_at_its_timeout_to_the_instant(
    autojump_clock: Any, harness: Harness, job_timeout: float
) -> None:
    queue = harness.queue(workers=1)
    times: list[float] = []

    @queue.handler("forever")
    async def forever(payload: str) -> None:
        times.append(trio.current_time())
        try:
            await trio.sleep_forever()
        finally:
            times.append(trio.current_time())

    async with queue:
        job_id = await queue.enqueue("forever", "", job_timeout=job_timeout, max_retries=0)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(job_timeout + 1.0)
            queue.shutdown()
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.DEAD
    assert times[1] - times[0] == pytest.approx(job_timeout, abs=1e-9)


async def test_a_deadline_armed_for_one_job_never_cuts_the_next_one_short(
    autojump_clock: Any, harness: Harness
) -> None:
    # One worker runs both jobs under the same cancel scope: the first one's deadline,
    # armed while it ran, must be gone when the second one starts.
    queue = harness.queue(workers=1)
    ran: list[str] = []

    @queue.handler("sleep")
    async def sleep(payload: str) -> None:
        await trio.sleep(float(payload))
        ran.append(payload)

    async with queue:
        first = await queue.enqueue("sleep", "3", job_timeout=4.0)
        second = await queue.enqueue("sleep", "20", job_timeout=30.0)
        quick = await queue.enqueue("sleep", "0.1", job_timeout=1.5)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(30.0)
            queue.shutdown()
        statuses = [(await queue.inspect(i)).status for i in (first, second, quick)]
    assert ran == ["3", "20", "0.1"]
    assert statuses == [JobStatus.COMPLETED] * 3
