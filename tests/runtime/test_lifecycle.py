"""Lifecycle, retries, timeouts and ordering on the in-memory adapters, in virtual time."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
import trio

from kyu_trio import Job, JobStatus, current_job
from kyu_trio._ports import Ready

from .conftest import Harness


async def serve_for(queue: Any, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        await trio.sleep(seconds)
        queue.shutdown()


async def test_success_is_recorded_completed_with_completed_at(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue()
    seen: list[Job] = []

    @queue.handler("ok")
    async def ok(payload: str) -> None:
        seen.append(current_job())

    async with queue:
        job_id = await queue.enqueue("ok", '{"x": 1}')
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.COMPLETED
    assert job.completed_at is not None
    assert job.retry_count == 0
    assert [j.payload for j in seen] == ['{"x": 1}']
    assert seen[0].id == job_id


async def test_retry_backoff_is_exactly_1_2_4_seconds(
    autojump_clock: Any, harness: Harness
) -> None:
    # scheduler_interval small so promotion happens right at the due time.
    queue = harness.queue(scheduler_interval=0.25)
    runs: list[float] = []

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        runs.append(trio.current_time())
        raise RuntimeError("nope")

    async with queue:
        job_id = await queue.enqueue("flaky", "", max_retries=3)
        start = trio.current_time()
        await serve_for(queue, 20)
        job = await queue.inspect(job_id)
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert runs[0] == start
    # The n-th retry is due exactly 2**(n-1) s after the n-th failure; the scheduler
    # ticks every 0.25 s from t=0, so each due time falls exactly on a tick.
    assert gaps == [1.0, 2.0, 4.0]
    assert job.status is JobStatus.DEAD
    assert job.retry_count == 3
    assert job.error_message == "RuntimeError: nope"


async def test_third_retry_due_exactly_4s_after_third_failure(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue()

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        raise ValueError("x")

    async with queue:
        job_id = await queue.enqueue("flaky", "", max_retries=5)
        for _ in range(3):
            # run_once leaves retries for later: advance to the due time, run again.
            await queue.run_once()
            job = await queue.inspect(job_id)
            failed_at = job.updated_at
            await trio.sleep((job.scheduled_at - harness.clock.now()).total_seconds())
        assert job.retry_count == 3
        assert job.scheduled_at - failed_at == timedelta(seconds=4)


async def test_backoff_capped_at_max_backoff(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue(max_backoff=3.0)

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        raise ValueError("x")

    async with queue:
        job_id = await queue.enqueue("flaky", "", max_retries=10)
        delays = []
        for _ in range(4):
            await queue.run_once()
            job = await queue.inspect(job_id)
            delays.append((job.scheduled_at - job.updated_at).total_seconds())
            await trio.sleep(delays[-1])
    assert delays == [1.0, 2.0, 3.0, 3.0]


async def test_run_once_does_not_wait_for_future_retries(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue()
    calls = 0

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("x")

    async with queue:
        job_id = await queue.enqueue("flaky", "")
        before = trio.current_time()
        await queue.run_once()
        assert trio.current_time() == before  # no sleeping, no busy wait
        assert calls == 1
        assert (await queue.inspect(job_id)).status is JobStatus.FAILED


async def test_dead_after_max_retries_plus_one_runs(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue(scheduler_interval=0.5)
    calls = 0

    @queue.handler("bad")
    async def bad(payload: str) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("k")

    async with queue:
        job_id = await queue.enqueue("bad", "", max_retries=2)
        await serve_for(queue, 30)
        job = await queue.inspect(job_id)
        dead = await queue.dead_jobs()
    assert calls == 3
    assert job.status is JobStatus.DEAD
    assert job.retry_count == 2
    assert job.error_message == "KeyError: 'k'"
    assert [j.id for j in dead] == [job_id]


async def test_timeout_is_a_failure_with_message(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue()

    @queue.handler("slow")
    async def slow(payload: str) -> None:
        await trio.sleep(100)

    async with queue:
        job_id = await queue.enqueue("slow", "", job_timeout=10.0, max_retries=0)
        start = trio.current_time()
        await queue.run_once()
        assert trio.current_time() - start == 10.0
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.DEAD
    assert job.error_message == "TimeoutError: timed out after 10.0s"


async def test_default_job_timeout_is_stored_at_enqueue(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(default_job_timeout=7.5)
    async with queue:
        job_id = await queue.enqueue("x", "")
        assert (await queue.inspect(job_id)).job_timeout == 7.5


async def test_unknown_job_type_fails_then_dies(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue()
    async with queue:
        job_id = await queue.enqueue("nobody-handles-this", "", max_retries=0)
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.DEAD
    assert job.error_message == "UnknownJobType: no handler registered for 'nobody-handles-this'"


async def test_scheduled_job_waits_for_its_time(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue(scheduler_interval=0.5)
    ran_at: list[float] = []

    @queue.handler("later")
    async def later(payload: str) -> None:
        ran_at.append(trio.current_time())

    async with queue:
        start = trio.current_time()
        job_id = await queue.enqueue(
            "later", "", scheduled_at=harness.clock.now() + timedelta(seconds=3)
        )
        assert (await queue.inspect(job_id)).status is JobStatus.SCHEDULED
        assert await harness.broker.size(queue.config.queue_name) == 0
        await serve_for(queue, 10)
    assert ran_at == [start + 3.0]


async def test_priority_then_fifo_with_one_worker(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue(workers=1)
    order: list[str] = []

    @queue.handler("t")
    async def record(payload: str) -> None:
        order.append(payload)

    priorities = [(i * 7) % 5 - 2 for i in range(200)]  # -2..2, interleaved
    async with queue:
        for i, p in enumerate(priorities):
            await queue.enqueue("t", f"{p}:{i}", priority=p)
        await queue.run_once()
    expected = [f"{p}:{i}" for i, p in sorted(enumerate(priorities), key=lambda x: (-x[1], x[0]))]
    assert order == expected


async def test_middleware_order_and_current_job(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue()
    trace: list[str] = []

    async def outer(job: Job, call_next: Any) -> None:
        trace.append(f"outer-in:{job.job_type}")
        await call_next()
        trace.append("outer-out")

    async def inner(job: Job, call_next: Any) -> None:
        trace.append("inner-in")
        await call_next()
        trace.append("inner-out")

    queue.use(outer)
    queue.use(inner)

    @queue.handler("t")
    async def handler(payload: str) -> None:
        trace.append(f"handler:{current_job().payload}")

    async with queue:
        await queue.enqueue("t", "p")
        await queue.run_once()
    assert trace == ["outer-in:t", "inner-in", "handler:p", "inner-out", "outer-out"]


async def test_cancelled_job_never_runs(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue()
    ran = []

    @queue.handler("t")
    async def handler(payload: str) -> None:
        ran.append(payload)

    async with queue:
        job_id = await queue.enqueue("t", "x")
        assert await queue.cancel_job(job_id) is True
        # Even with the id back in the broker, the conditional claim refuses it.
        await harness.broker.push(queue.config.queue_name, [Ready(job_id, 0, 1)])
        await queue.run_once()
        assert ran == []
        assert (await queue.inspect(job_id)).status is JobStatus.CANCELLED
        assert await queue.cancel_job(job_id) is False


async def test_queues_are_isolated(autojump_clock: Any, harness: Harness) -> None:
    a = harness.queue(queue_name="a")
    b = harness.queue(queue_name="b")
    ran: list[str] = []

    @a.handler("t")
    async def handler(payload: str) -> None:
        ran.append(payload)

    async with a, b:
        await b.enqueue("t", "from-b")
        b_dead = await b.enqueue("t", "b2", max_retries=0)
        await a.run_once()
        assert ran == []
        await b.run_once()  # b has no handler: dies there
        assert [j.id for j in await b.dead_jobs()] == [b_dead]
        assert all(j.queue == "b" for j in await b.dead_jobs())
        assert await a.dead_jobs() == []


@pytest.mark.parametrize("raise_in", ["handler", "middleware"])
async def test_error_message_is_type_and_text_truncated(
    autojump_clock: Any, harness: Harness, raise_in: str
) -> None:
    queue = harness.queue()

    async def mw(job: Job, call_next: Any) -> None:
        if raise_in == "middleware":
            raise OSError("m" * 10_000)
        await call_next()

    queue.use(mw)

    @queue.handler("t")
    async def handler(payload: str) -> None:
        raise OSError("h" * 10_000)

    async with queue:
        job_id = await queue.enqueue("t", "", max_retries=0)
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert job.error_message is not None
    assert job.error_message.startswith("OSError: ")
    assert len(job.error_message.encode()) <= 4096


async def test_payloads_are_logged_only_when_asked(
    autojump_clock: Any, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    for log_payloads in (False, True):
        queue = harness.queue(log_payloads=log_payloads)

        @queue.handler("t")
        async def t(payload: str) -> None:
            raise ValueError("no")

        caplog.clear()
        with caplog.at_level("DEBUG", logger="kyu_trio"):
            async with queue:
                await queue.enqueue("t", "secret-payload-123", max_retries=0)
                await queue.run_once()
        logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
        assert ("secret-payload-123" in logged) is log_payloads


async def test_every_worker_gets_a_thread_for_sync_handlers(harness: Harness) -> None:
    # trio's default thread limit is 40: with more workers than that, a sync job could
    # wait for a thread while its timeout runs (issue 10, production defaults).
    queue = harness.queue(workers=50)
    import time

    @queue.handler("sync")
    def sync(payload: str) -> None:
        time.sleep(0.4)

    async with queue:
        ids = [
            await queue.enqueue("sync", str(i), job_timeout=0.7, max_retries=0) for i in range(50)
        ]
        await queue.run_once()
        jobs = [await queue.inspect(i) for i in ids]
    assert {j.status for j in jobs} == {JobStatus.COMPLETED}
