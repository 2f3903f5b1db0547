"""`Queue.run_once` returns what it did; the maintenance services share one ticker."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from kyu_trio import Config, KyuConnectionError, MemoryBroker, MemoryStore, Queue, TrioClock
from kyu_trio._runtime._outage import Outage
from kyu_trio._runtime._service import ticker


def memory_queue(**config: Any) -> Queue:
    return Queue(
        Config(metrics_port=0, **config),
        store=MemoryStore(),
        broker=MemoryBroker(),
        clock=TrioClock(),
    )


async def test_run_once_reports_each_run_in_the_order_they_finished(autojump_clock: Any) -> None:
    queue = memory_queue(workers=3)

    @queue.handler("sleep")
    async def sleep(payload: str) -> None:
        await trio.sleep(float(payload))

    @queue.handler("boom")
    async def boom(payload: str) -> None:
        await trio.sleep(float(payload))
        raise ValueError(payload)

    async with queue:
        slow = await queue.enqueue("sleep", "3")
        fast = await queue.enqueue("sleep", "1")
        retried = await queue.enqueue("boom", "2")
        dies = await queue.enqueue("boom", "4", max_retries=0)
        summary = await queue.run_once()
        assert [job.id for job in summary.ran] == [fast, retried, slow, dies]
        assert {job.status.value for job in summary.ran} == {"running"}  # as claimed
        assert (summary.completed, summary.failed, summary.dead, summary.requeued) == (2, 1, 1, 0)
        assert (summary.promoted, summary.rescued) == (0, 0)
        # The retry falls due after its backoff: the next call promotes and runs it.
        await trio.sleep(5)
        again = await queue.run_once()
        assert ([j.id for j in again.ran], again.promoted, again.failed) == ([retried], 1, 1)
        assert (await queue.run_once()).ran == ()


async def test_run_once_counts_a_rescue_and_does_not_run_it_before_its_backoff(
    autojump_clock: Any,
) -> None:
    store = MemoryStore()
    queue = Queue(
        Config(metrics_port=0, stale_job_timeout=10.0),
        store=store,
        broker=MemoryBroker(),
        clock=TrioClock(),
    )
    queue.register("t", lambda payload: None)
    async with queue:
        job_id = await queue.enqueue("t", "", job_timeout=1.0)
        await store.claim_jobs(queue.config.queue_name, [job_id], "lost", queue._clock.now())
        await trio.sleep(11)
        summary = await queue.run_once()
        assert (summary.rescued, summary.ran) == (1, ())
        job = await queue.inspect(job_id)
        assert (job.status.value, job.retry_count) == ("failed", 1)
        await trio.sleep(1)
        assert [j.id for j in (await queue.run_once()).ran] == [job_id]


async def test_ticker_runs_each_pass_and_backs_off_through_an_outage(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    times: list[float] = []
    failures = iter([False, True, True, False, False])

    async def run_once() -> None:
        times.append(trio.current_time())
        if next(failures):
            raise KyuConnectionError("down")

    outage = Outage(logging.getLogger("test"), "the test service", cap=0.0)
    with trio.move_on_after(25):
        await ticker(run_once, 10.0, outage, first_after_interval=True)
    # Passes every 10 s; a failed pass is tried again at once (the cap is 0 s), not 10 s on.
    assert times == [10.0, 20.0, 20.0, 20.0]
    assert sum("retrying with backoff" in r.getMessage() for r in caplog.records) == 1
    assert sum("connection is back" in r.getMessage() for r in caplog.records) == 1


async def test_ticker_without_an_outage_lets_the_error_through(autojump_clock: Any) -> None:
    async def run_once() -> None:
        raise KyuConnectionError("down")

    with pytest.raises(KyuConnectionError):
        await ticker(run_once, 1.0)
