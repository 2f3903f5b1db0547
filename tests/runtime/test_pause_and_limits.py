"""Pausing a queue and fleet-wide limits per job type, in virtual time on the in-memory
adapters: several serving queues on one store stand for several processes."""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from kyu_trio import JobStatus, Queue

from .conftest import Harness


async def serve_all(nursery: trio.Nursery, queues: list[Queue]) -> None:
    for queue in queues:
        await queue.connect()
        await nursery.start(queue.serve)


async def test_pause_stops_claims_fleet_wide_and_resume_drains(
    autojump_clock: Any, harness: Harness
) -> None:
    queues = [harness.queue(workers=3), harness.queue(workers=3)]
    started: list[float] = []

    async def t(payload: int) -> None:
        started.append(trio.current_time())
        await trio.sleep(1.0)

    for queue in queues:
        queue.register("t", t)

    producer = queues[0]
    async with trio.open_nursery() as nursery:
        await serve_all(nursery, queues)
        ids = [await producer.enqueue("t", i) for i in range(30)]
        await trio.sleep(1.5)  # some ran, some run now
        await producer.pause()
        paused_at = trio.current_time()
        assert await producer.is_paused()
        assert (await producer.stats()).paused
        await producer.enqueue("t", 99)  # enqueues are still accepted
        await trio.sleep(30)
        # Nothing started after the pause; what ran at the pause finished.
        assert max(started) <= paused_at
        jobs = [await producer.inspect(i) for i in ids]
        assert not [j for j in jobs if j.status is JobStatus.RUNNING]
        done_before = sum(j.status is JobStatus.COMPLETED for j in jobs)
        assert 0 < done_before < 30
        # A worker started while paused stays paused.
        late = harness.queue(workers=3)
        late.register("t", t)
        await serve_all(nursery, [late])
        await trio.sleep(5)
        assert max(started) <= paused_at
        await producer.resume()
        resumed_at = trio.current_time()
        await trio.sleep(30)
        final = [(await producer.inspect(i)).status for i in ids]
        assert set(final) == {JobStatus.COMPLETED}
        assert min(s for s in started if s > paused_at) - resumed_at <= 1.5
        for queue in [*queues, late]:
            queue.shutdown()


async def test_concurrency_holds_fleet_wide_without_blocking_other_types(
    autojump_clock: Any, harness: Harness
) -> None:
    queues = [harness.queue(workers=20), harness.queue(workers=20)]
    running = 0
    most = 0
    b_done: list[float] = []
    a_done: list[float] = []
    for queue in queues:

        @queue.handler("a", concurrency=3)
        async def a(payload: int) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                await trio.sleep(0.1)
            finally:
                running -= 1
            a_done.append(trio.current_time())

        @queue.handler("b")
        async def b(payload: int) -> None:
            await trio.sleep(0.1)
            b_done.append(trio.current_time())

    producer = queues[0]
    async with trio.open_nursery() as nursery:
        await serve_all(nursery, queues)
        # A backlog of the limited type ahead of the other type in the queue.
        await producer.enqueue_many([("a", i) for i in range(200)])
        await producer.enqueue_many([("b", i) for i in range(200)])
        while len(a_done) < 200 or len(b_done) < 200:  # noqa: ASYNC110
            await trio.sleep(0.5)
        for queue in queues:
            queue.shutdown()
    assert most == 3
    # No head-of-line blocking: every B job finished long before the A backlog.
    assert max(b_done) < max(a_done) / 4
    # The limit is used: 200 jobs of 0.1 s, 3 at a time, take about 6.7 s.
    assert max(a_done) < 200 * 0.1 / 3 * 1.5


async def test_a_rate_limit_holds_in_every_window(autojump_clock: Any, harness: Harness) -> None:
    queues = [harness.queue(workers=10), harness.queue(workers=10)]
    starts: list[float] = []
    for queue in queues:

        @queue.handler("r", rate_limit=(10, 1.0))
        async def r(payload: int) -> None:
            starts.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await serve_all(nursery, queues)
        t0 = trio.current_time()
        await queues[0].enqueue_many([("r", i) for i in range(100)])
        while len(starts) < 100:  # noqa: ASYNC110
            await trio.sleep(0.5)
        for queue in queues:
            queue.shutdown()
    starts.sort()
    window: deque[float] = deque()
    for t in starts:
        window.append(t)
        while window[0] <= t - 1.0:
            window.popleft()
        assert len(window) <= 10
    # Close to 10 per second: 100 starts in about 10 s.
    assert starts[-1] - t0 < 12


async def test_parked_jobs_come_back_when_the_wake_up_is_lost(
    autojump_clock: Any, harness: Harness, monkeypatch: Any
) -> None:
    # The slot frees while the over-limit ids are still on their way to the parked set
    # (in real life: in another process): the completion finds nothing to unpark. The
    # parking process gives them another chance every PARK_RECHECK seconds.
    from kyu_trio._runtime import _gate

    async def lost(self: Any, job_types: Any) -> None:
        list(job_types)

    monkeypatch.setattr(_gate.ClaimGate, "released", lost)
    queue = harness.queue(workers=5)
    done: list[float] = []

    @queue.handler("a", concurrency=1)
    async def a(payload: int) -> None:
        await trio.sleep(0.1)
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await serve_all(nursery, [queue])
        t0 = trio.current_time()
        await queue.enqueue_many([("a", i) for i in range(5)])
        while len(done) < 5:  # noqa: ASYNC110
            await trio.sleep(0.1)
        queue.shutdown()
    # One at a time, each woken by the recheck: about a second apiece, not the sweep's
    # reaper_interval.
    assert max(done) - t0 < 5 * (_gate.PARK_RECHECK + 0.5)
