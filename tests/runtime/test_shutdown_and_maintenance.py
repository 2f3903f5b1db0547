"""Shutdown, cancellation, the reaper, heartbeats and broker resync, in virtual time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
import trio

from kyu_trio import JobStatus, KyuConnectionError, MemoryBroker, current_job
from kyu_trio._ports import Lease, Ready
from kyu_trio._runtime._reaper import SWEEP_SETTLE

from .conftest import Harness


async def test_graceful_shutdown_lets_short_jobs_finish(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(shutdown_grace=10.0)
    started = trio.Event()

    @queue.handler("t")
    async def t(payload: str) -> None:
        started.set()
        await trio.sleep(3)

    async with queue:
        job_id = await queue.enqueue("t", "")
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await started.wait()
            queue.shutdown()
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.COMPLETED


async def test_shutdown_after_grace_requeues_without_spending_a_retry(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(shutdown_grace=2.0)
    started = trio.Event()

    @queue.handler("t")
    async def t(payload: str) -> None:
        started.set()
        await trio.sleep(100)

    async with queue:
        job_id = await queue.enqueue("t", "")
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await started.wait()
            t0 = trio.current_time()
            queue.shutdown()
        assert trio.current_time() - t0 == pytest.approx(2.0)
        job = await queue.inspect(job_id)
        assert job.status is JobStatus.PENDING
        assert job.retry_count == 0
        # ...and it is back in the broker, so the next worker runs it.
        assert await harness.broker.size(queue.config.queue_name) == 1


async def test_cancelling_serve_requeues_in_flight_jobs_at_once(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(shutdown_grace=30.0, workers=3)
    running = 0
    all_started = trio.Event()

    @queue.handler("t")
    async def t(payload: str) -> None:
        nonlocal running
        running += 1
        if running == 3:
            all_started.set()
        await trio.sleep(100)

    async with queue:
        ids = [await queue.enqueue("t", str(i)) for i in range(5)]
        with trio.CancelScope() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.serve)
                await all_started.wait()
                t0 = trio.current_time()
                outer.cancel()
        assert trio.current_time() == t0  # no grace period on cancellation
        jobs = [await queue.inspect(i) for i in ids]
    assert [j.status for j in jobs] == [JobStatus.PENDING] * 5
    assert all(j.retry_count == 0 for j in jobs)
    assert await harness.broker.size(queue.config.queue_name) == 5


async def test_runtime_task_crash_fails_serve_loudly(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue()

    async def broken_promote(*args: Any) -> Any:
        raise RuntimeError("programming error in the store")

    harness.store.promote_due = broken_promote  # type: ignore[method-assign]
    async with queue:
        with pytest.raises(RuntimeError, match="programming error"):
            await queue.serve()


async def test_reaper_fails_a_lost_job_with_backoff_then_it_runs_again(
    autojump_clock: Any, harness: Harness
) -> None:
    """A rescue is a failure like any other: it spends a retry and waits out the retry
    policy's backoff (1 s after a first failure) before the scheduler makes it ready."""
    queue = harness.queue(stale_job_timeout=60.0, reaper_interval=10.0, scheduler_interval=0.25)
    ran: list[int] = []

    @queue.handler("t")
    async def t(payload: str) -> None:
        ran.append(current_job().retry_count)

    async with queue:
        job_id = await queue.enqueue("t", "", job_timeout=5.0)
        # A worker in another process claims it and dies without a trace.
        popped = await harness.broker.pop(queue.config.queue_name, 1)
        [claimed] = await harness.store.claim_jobs(
            queue.config.queue_name, list(popped), "lost-worker", harness.clock.now()
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(65)  # stale at 60 s; the reaper ticks at 10, 20, ..., 70
            assert ran == []
            rescued_at = harness.clock.now() + timedelta(seconds=5)
            await trio.sleep(5.5)
            job = await queue.inspect(job_id)
            assert (job.status, job.retry_count) == (JobStatus.FAILED, 1)
            assert job.error_message == "worker lost while running (attempt 1)"
            assert job.scheduled_at == rescued_at + timedelta(seconds=1)  # the backoff
            assert ran == []
            await trio.sleep(1)
            assert ran == [1]
            queue.shutdown()
        job = await queue.inspect(job_id)
        assert job.status is JobStatus.COMPLETED
        assert job.retry_count == 1
        assert job.attempt == 2
        # The lost worker's late write is fenced off.
        assert (
            await harness.store.complete_jobs(
                [Lease(job_id, claimed.attempt)], "lost-worker", harness.clock.now()
            )
            == []
        )


async def test_reaper_marks_dead_when_no_retry_left(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue(stale_job_timeout=60.0)
    async with queue:
        job_id = await queue.enqueue("t", "", max_retries=0, job_timeout=1.0)
        popped = await harness.broker.pop(queue.config.queue_name, 1)
        await harness.store.claim_jobs(
            queue.config.queue_name, list(popped), "gone", harness.clock.now()
        )
        await trio.sleep(61)
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.DEAD
    assert job.error_message == "worker lost while running (attempt 1)"
    # Counted as dead like any other dead job, so dashboards do not undercount.
    labels = {"queue": queue.config.queue_name}
    assert queue.metrics.registry.get_sample_value("kyu_jobs_dead_total", labels) == 1
    assert queue.metrics.registry.get_sample_value("kyu_reaper_rescued_total", labels) == 1


async def test_reaper_waits_for_the_jobs_own_timeout(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue(stale_job_timeout=10.0, heartbeat_interval=1.0)
    async with queue:
        job_id = await queue.enqueue("t", "", job_timeout=100.0)
        popped = await harness.broker.pop(queue.config.queue_name, 1)
        await harness.store.claim_jobs(
            queue.config.queue_name, list(popped), "gone", harness.clock.now()
        )
        await trio.sleep(50)
        await queue.run_once()
        assert (await queue.inspect(job_id)).status is JobStatus.RUNNING
        await trio.sleep(51)
        await queue.run_once()
        assert (await queue.inspect(job_id)).status is not JobStatus.RUNNING


async def test_heartbeat_keeps_a_long_job_from_being_rescued(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(stale_job_timeout=10.0, heartbeat_interval=2.0, reaper_interval=1.0)
    runs = 0

    @queue.handler("long")
    async def long(payload: str) -> None:
        nonlocal runs
        runs += 1
        await trio.sleep(50)

    async with queue:
        job_id = await queue.enqueue("long", "", job_timeout=100.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(60)
            queue.shutdown()
        job = await queue.inspect(job_id)
    assert runs == 1
    assert job.status is JobStatus.COMPLETED
    assert job.retry_count == 0


async def test_broker_flush_mid_run_is_resynced(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue(workers=1, scheduler_interval=1.0)
    done: list[str] = []
    gate = trio.Event()

    @queue.handler("t")
    async def t(payload: str) -> None:
        await gate.wait()
        done.append(payload)

    async with queue:
        for i in range(10):
            await queue.enqueue("t", str(i))
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(0.5)
            harness.broker.flush()  # Redis loses everything mid-run
            gate.set()
            await trio.sleep(5)
            queue.shutdown()
    assert sorted(done, key=int) == [str(i) for i in range(10)]


async def test_broker_flushed_between_enqueue_and_run_once(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue()
    done: list[str] = []

    @queue.handler("t")
    async def t(payload: str) -> None:
        done.append(payload)

    async with queue:
        await queue.run_once()  # the broker knows the queue
        for i in range(5):
            await queue.enqueue("t", str(i))
        harness.broker.flush()
        await queue.run_once()
    assert sorted(done) == ["0", "1", "2", "3", "4"]


async def test_lost_push_is_repaired_by_the_reaper_sweep(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue()
    done: list[str] = []

    @queue.handler("t")
    async def t(payload: str) -> None:
        done.append(payload)

    async with queue:
        await queue.run_once()
        job_id = await queue.enqueue("t", "lost")
        # The push after the commit failed: the row is pending, the broker never saw it.
        await harness.broker.remove(queue.config.queue_name, [job_id])
        await queue.run_once()
    assert done == ["lost"]


async def test_job_popped_twice_runs_once(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue(workers=4)
    runs = 0

    @queue.handler("t")
    async def t(payload: str) -> None:
        nonlocal runs
        runs += 1
        await trio.sleep(1)

    async with queue:
        job_id = await queue.enqueue("t", "")
        name = queue.config.queue_name
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(0.5)
            # The scheduler (or a resync) pushes the id again while it runs.
            await harness.broker.push(name, [Ready(job_id, 0, 99)])
            await trio.sleep(3)
            queue.shutdown()
        assert runs == 1
        assert (await queue.inspect(job_id)).status is JobStatus.COMPLETED


async def test_retry_popped_before_it_is_due_does_not_run(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue()
    runs: list[float] = []

    @queue.handler("t")
    async def t(payload: str) -> None:
        runs.append(trio.current_time())
        raise ValueError

    async with queue:
        job_id = await queue.enqueue("t", "", max_retries=1)
        await queue.run_once()
        await harness.broker.push(queue.config.queue_name, [Ready(job_id, 0, 1000)])
        await queue.run_once()  # popped, but not due for 1 s: the claim refuses it
        assert len(runs) == 1
        await trio.sleep(1)
        await queue.run_once()
        assert len(runs) == 2
        job = await queue.inspect(job_id)
        assert job.status is JobStatus.DEAD
        assert job.scheduled_at - job.created_at == timedelta(seconds=1)


class ThreadLikeBroker(MemoryBroker):
    """A blocking pop that, like redis-py's in a thread, finishes even when cancelled."""

    async def pop_wait(self, queue: str, wait: float, count: int = 1) -> dict[str, float]:
        with trio.CancelScope(shield=True):
            return await super().pop_wait(queue, wait, count)


async def test_id_popped_after_shutdown_began_is_handed_back(autojump_clock: Any) -> None:
    harness = Harness()
    harness.broker = ThreadLikeBroker()
    queue = harness.queue(workers=3)
    ran: list[str] = []

    @queue.handler("t")
    async def t(payload: str) -> None:
        ran.append(payload)

    async with queue:
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(0.1)  # the fetcher now blocks in pop_wait
            queue.shutdown()
            job_id = await queue.enqueue("t", "late")  # arrives while the pop still waits
        assert ran == []
        assert (await queue.inspect(job_id)).status is JobStatus.PENDING
        assert list(await harness.broker.pop(queue.config.queue_name, 5)) == [job_id]


async def test_claim_outage_backoff_does_not_delay_cancellation(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(workers=2)

    async def store_is_down(*args: Any) -> Any:
        raise KyuConnectionError("PostgreSQL at db:5432 is unreachable or went away: test")

    async with queue:
        job_id = await queue.enqueue("t", "")
        harness.store.claim_jobs = store_is_down  # type: ignore[method-assign]
        with trio.CancelScope() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.serve)
                await trio.sleep(60)  # backoff has grown to its cap by now
                t0 = trio.current_time()
                outer.cancel()
        assert trio.current_time() == t0  # the backoff sleep was not shielded
        # The popped id went back to the broker; the row is still pending.
        assert list(await harness.broker.pop(queue.config.queue_name, 5)) == [job_id]
        assert (await harness.store.get_job(job_id)).status is JobStatus.PENDING


class DownOnPushBroker(MemoryBroker):
    """Redis that is away when the enqueue pushes (and back afterwards)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def push_blocking(self, queue: str, entries: Sequence[Ready]) -> None:
        if self.down:
            raise KyuConnectionError("Redis at 127.0.0.1:6379 is unreachable (test)")
        super().push_blocking(queue, entries)


async def test_enqueue_with_redis_away_commits_logs_and_the_sweep_pushes_later(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness()
    broker = harness.broker = DownOnPushBroker()
    queue = harness.queue(reaper_interval=10.0)
    ran: list[str] = []

    @queue.handler("t")
    async def handle(payload: str) -> None:
        ran.append(payload)

    async with queue:
        job_id = await queue.enqueue("t", "p")  # no exception: the row is committed
        assert (await queue.inspect(job_id)).status is JobStatus.PENDING
        assert await broker.size(queue.config.queue_name) == 0
        assert "could not push 1 jobs to Redis" in caplog.text
        broker.down = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.serve)
            await trio.sleep(15)  # one reaper pass: its sweep pushes the missing id
            nursery.cancel_scope.cancel()
    assert ran == ["p"]


async def test_the_sweep_does_not_push_an_id_a_fetcher_is_claiming(
    autojump_clock: Any, harness: Harness
) -> None:
    # Under load the sweep used to find ids popped a moment ago, whose claim was still on
    # its way, and push them again: a second pop that claims nothing.
    queue = harness.queue()
    name = queue.config.queue_name
    async with queue:
        in_flight = await queue.enqueue("t", "")
        lost = await queue.enqueue("t", "")
        popped = await harness.broker.pop(name, 1)
        assert list(popped) == [in_flight]
        await harness.broker.remove(name, [lost])
        reaper = queue._runtime.reaper  # type: ignore[union-attr]

        async def claim_soon() -> None:
            await trio.sleep(SWEEP_SETTLE / 2)
            await harness.store.claim_jobs(name, [in_flight], "w", harness.clock.now())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim_soon)
            await reaper.run_once()
    assert set(harness.broker.sets[name]) == {lost}
