"""Cancelling running jobs, on the in-memory adapters: the cancel reaches the handler's
scope at once through the listener, or through the heartbeat when the notification is
lost; the job is recorded cancelled, never retried; races with the run's own write end
one way."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import trio

from kyu_trio import JobFailed, JobStatus, MemoryStore, Queue, current_job
from kyu_trio._ports import Failure, Lease

from .conftest import Harness


def deaf(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lose every cancel notification: the listener listens, and hears nothing."""

    async def listen_enqueued(
        listening: Callable[[], None], deliver: Any, cancelled: Any = None
    ) -> None:
        listening()
        await trio.sleep_forever()

    monkeypatch.setattr(store, "listen_enqueued", listen_enqueued)


class Runs:
    """A handler that runs until cancelled, and what it saw."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.starts = 0
        self.cancelled_at: float | None = None
        self.cleaned_up = False

    async def handler(self, payload: Any) -> None:
        self.starts += 1
        self.started.set()
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            self.cancelled_at = trio.current_time()
            raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.01)  # cleanup that awaits, as a real one would
            self.cleaned_up = True


def processed(queue: Queue, status: str) -> int:
    return queue.metrics.tally.processed.get(status, 0)


async def test_cancelling_a_running_job_cancels_its_handler_at_once(
    autojump_clock: Any, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kyu_trio")
    queue = harness.queue()
    runs = Runs()
    queue.register("long", runs.handler)
    async with queue, trio.open_nursery() as nursery:
        job_id = await queue.enqueue("long", None, job_timeout=7200, max_retries=5)
        await nursery.start(queue.serve)
        await runs.started.wait()
        asked = trio.current_time()
        assert await queue.cancel_job(job_id) is True
        with pytest.raises(JobFailed, match="ended cancelled"):
            await queue.result(job_id)
        await trio.sleep(30)  # long enough for any retry or rescue to show up
        job = await queue.inspect(job_id)
        queue.shutdown()
    assert runs.cancelled_at is not None and runs.cancelled_at - asked < 0.001
    assert runs.cleaned_up and runs.starts == 1
    assert (job.status, job.retry_count) == (JobStatus.CANCELLED, 0)
    assert [(a.attempt, a.outcome) for a in job.attempts] == [(1, "cancelled")]
    assert processed(queue, "cancelled") == 1
    assert processed(queue, "failed") == processed(queue, "requeued") == 0
    ours = [r for r in caplog.records if getattr(r, "job_id", None) == job_id]
    assert [(r.levelname, r.kyu_event) for r in ours] == [("INFO", "cancelled")]  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_lost_notification_is_repaired_by_the_heartbeat(
    autojump_clock: Any, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    deaf(harness.store, monkeypatch)
    queue = harness.queue(heartbeat_interval=2.0)
    runs = Runs()
    queue.register("long", runs.handler)
    async with queue, trio.open_nursery() as nursery:
        job_id = await queue.enqueue("long", None, job_timeout=7200)
        await nursery.start(queue.serve)
        await runs.started.wait()
        asked = trio.current_time()
        assert await queue.cancel_job(job_id) is True
        await trio.sleep(10)
        job = await queue.inspect(job_id)
        queue.shutdown()
    # Not heard: the next heartbeat, at most one interval later, finds the lease gone.
    assert runs.cancelled_at is not None and 0 < runs.cancelled_at - asked <= 2.0
    assert runs.cleaned_up and runs.starts == 1
    assert job.status is JobStatus.CANCELLED
    assert [a.outcome for a in job.attempts] == ["cancelled"]
    assert processed(queue, "cancelled") == 1


async def test_run_once_learns_of_a_cancel_from_the_heartbeat(
    autojump_clock: Any, harness: Harness
) -> None:
    # run_once has no listener: the heartbeat alone stops the run.
    queue = harness.queue(heartbeat_interval=1.0)
    runs = Runs()
    queue.register("long", runs.handler)
    async with queue, trio.open_nursery() as nursery:
        job_id = await queue.enqueue("long", None, job_timeout=7200)
        summary: list[Any] = []

        async def run_once() -> None:
            summary.append(await queue.run_once())

        nursery.start_soon(run_once)
        await runs.started.wait()
        asked = trio.current_time()
        assert await queue.cancel_job(job_id) is True
    assert runs.cancelled_at is not None and runs.cancelled_at - asked <= 1.0
    assert summary[0].ran == () and summary[0].requeued == 0
    assert (await _inspect(harness, job_id)).status is JobStatus.CANCELLED


async def _inspect(harness: Harness, job_id: str) -> Any:
    job = await harness.store.get_job(job_id)
    assert job is not None
    return job


async def test_an_asyncio_handler_is_cancelled_and_its_finally_runs(harness: Harness) -> None:
    pytest.importorskip("trio_asyncio")
    queue = harness.queue()
    seen: dict[str, bool] = {}
    # trio-asyncio runs the asyncio side in trio's thread, inside trio tasks: it may set
    # trio events.
    started, cleaned_up = trio.Event(), trio.Event()

    async def long(payload: None) -> None:
        seen["started"] = True
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise
        finally:
            await asyncio.sleep(0.01)  # cleanup that awaits, on asyncio
            seen["cleaned_up"] = True
            cleaned_up.set()

    queue.register("long", long, asyncio=True)
    async with queue, trio.open_nursery() as nursery:
        job_id = await queue.enqueue("long", None, job_timeout=7200, max_retries=5)
        await nursery.start(queue.serve)
        with trio.fail_after(10):
            await started.wait()
        assert await queue.cancel_job(job_id) is True
        with trio.fail_after(5):
            with pytest.raises(JobFailed, match="ended cancelled"):
                await queue.result(job_id)
            await cleaned_up.wait()
        await trio.sleep(0.5)  # a retry, had one been scheduled, would start now
        job = await queue.inspect(job_id)
        queue.shutdown()
    assert seen == {"started": True, "cancelled": True, "cleaned_up": True}
    assert (job.status, job.retry_count) == (JobStatus.CANCELLED, 0)
    assert [(a.attempt, a.outcome) for a in job.attempts] == [(1, "cancelled")]
    assert processed(queue, "cancelled") == 1


async def test_a_sync_handler_is_recorded_cancelled_and_its_thread_abandoned(
    harness: Harness,
) -> None:
    queue = harness.queue(workers=1)
    release = threading.Event()
    entered = trio.Event()
    finished: list[str] = []
    token = trio.lowlevel.current_trio_token()

    @queue.handler("blocking")
    def blocking(payload: Any) -> str:
        token.run_sync_soon(entered.set)
        release.wait(10)
        finished.append(current_job().id)
        return "too late"

    @queue.handler("next")
    async def next_job(payload: Any) -> str:
        return "ran"

    try:
        async with queue, trio.open_nursery() as nursery:
            job_id = await queue.enqueue("blocking", None)
            await nursery.start(queue.serve)
            with trio.fail_after(5):
                await entered.wait()
                assert await queue.cancel_job(job_id) is True
                # The worker is free at once (its one worker runs the next job), while
                # the thread still blocks.
                assert await queue.result(await queue.enqueue("next", None)) == "ran"
            assert finished == []
            release.set()
            with trio.fail_after(5):
                while not finished:  # noqa: ASYNC110 - an abandoned thread has no event
                    await trio.sleep(0.01)
            await trio.sleep(0.05)
            job = await queue.inspect(job_id)
            queue.shutdown()
    finally:
        release.set()
    assert (job.status, job.result) == (JobStatus.CANCELLED, None)
    assert [a.outcome for a in job.attempts] == ["cancelled"]
    assert processed(queue, "cancelled") == 1 and processed(queue, "completed") == 1


class RacingStore(MemoryStore):
    """Cancels the job whose outcome is about to be written just before the write: the
    handler has returned (its scope is no longer the job's), and the cancel wins."""

    def __init__(self) -> None:
        super().__init__()
        self.race: set[str] = set()
        self.cancel_answers: list[bool] = []

    async def _cancel_first(self, ids: list[str]) -> None:
        for job_id in ids:
            if job_id in self.race:
                result = await self.cancel_job(job_id, self.jobs[job_id].updated_at)
                self.cancel_answers.append(result.outcome == "cancelled")

    async def complete_jobs(
        self, leases: Any, worker_id: str, now: Any, results: Any = None
    ) -> Any:
        await self._cancel_first([lease.id for lease in leases])
        return await super().complete_jobs(leases, worker_id, now, results)

    async def fail_jobs(self, failures: Any, worker_id: str, now: Any) -> Any:
        await self._cancel_first([f.lease.id for f in failures])
        return await super().fail_jobs(failures, worker_id, now)


@pytest.mark.parametrize("ends", ["returns", "raises"])
async def test_a_cancel_that_wins_against_the_runs_write_is_what_is_recorded(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture, ends: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="kyu_trio")
    harness = Harness()
    store = harness.store = RacingStore()
    queue = harness.queue()

    @queue.handler("quick")
    async def quick(payload: int) -> int:
        if ends == "raises":
            raise RuntimeError("boom")
        return payload

    async with queue:
        ids = await queue.enqueue_many([("quick", i) for i in range(4)])
        store.race = {ids[1], ids[3]}
        await queue.run_once()
        jobs = [await queue.inspect(i) for i in ids]
    winner = "completed" if ends == "returns" else "failed"
    assert [j.status.value for j in jobs] == [winner, "cancelled", winner, "cancelled"]
    assert store.cancel_answers == [True, True]
    for job in (jobs[1], jobs[3]):
        assert [a.outcome for a in job.attempts] == ["cancelled"]
        assert (job.result, job.retry_count) == (None, 0)
    assert processed(queue, "cancelled") == 2 and processed(queue, winner) == 2
    events = {(r.job_id, r.kyu_event) for r in caplog.records if hasattr(r, "job_id")}  # type: ignore[attr-defined]
    assert (ids[1], "cancelled") in events and (ids[1], winner) not in events


async def test_cancel_after_the_run_was_written_is_refused(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue()

    @queue.handler("quick")
    async def quick(payload: Any) -> str:
        return "done"

    async with queue:
        job_id = await queue.enqueue("quick", None)
        await queue.run_once()
        assert await queue.cancel_job(job_id) is False
        job = await queue.inspect(job_id)
    assert (job.status, job.result) == (JobStatus.COMPLETED, "done")
    assert processed(queue, "cancelled") == 0


async def test_a_cancel_for_another_processes_job_is_ignored(
    autojump_clock: Any, harness: Harness
) -> None:
    # Two pools on one store: only the one that runs the job stops it.
    a, b = harness.queue(workers=1), harness.queue(workers=1)
    runs_a, runs_b = Runs(), Runs()
    a.register("long", runs_a.handler)
    b.register("long", runs_b.handler)
    async with a, b, trio.open_nursery() as nursery:
        first = await a.enqueue("long", None, job_timeout=7200)
        await nursery.start(a.serve)
        await runs_a.started.wait()
        second = await a.enqueue("long", None, job_timeout=7200)
        await nursery.start(b.serve)
        await runs_b.started.wait()
        assert await a.cancel_job(second) is True
        await trio.sleep(1)
        assert runs_b.cancelled_at is not None and runs_a.cancelled_at is None
        assert (await a.inspect(first)).status is JobStatus.RUNNING
        assert await b.cancel_job(first) is True
        await trio.sleep(1)
        assert runs_a.cancelled_at is not None
        a.shutdown()
        b.shutdown()
    assert processed(a, "cancelled") == processed(b, "cancelled") == 1


async def test_a_run_whose_job_the_reaper_rescued_is_stopped_by_the_heartbeat(
    autojump_clock: Any, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # The reaper rescued the job (as after missed heartbeats): the run still going on
    # here is a duplicate, stopped at the next heartbeat, with nothing written by it.
    caplog.set_level(logging.INFO, logger="kyu_trio")
    queue = harness.queue(heartbeat_interval=2.0)
    runs = Runs()
    queue.register("long", runs.handler)
    async with queue, trio.open_nursery() as nursery:
        job_id = await queue.enqueue("long", None, job_timeout=7200, max_retries=3)
        await nursery.start(queue.serve)
        await runs.started.wait()
        job = await queue.inspect(job_id)
        lease = Lease(job.id, job.attempt)
        due = harness.clock.now() + timedelta(hours=1)
        rescue = Failure(lease, JobStatus.FAILED, "worker lost", due, outcome="lost")
        assert await harness.store.fail_jobs([rescue], queue.worker_id, harness.clock.now())
        rescued_at = trio.current_time()
        await trio.sleep(5)
        job = await queue.inspect(job_id)
        queue.shutdown()
    assert runs.cancelled_at is not None and runs.cancelled_at - rescued_at <= 2.0
    assert runs.cleaned_up
    assert (job.status, job.retry_count) == (JobStatus.FAILED, 1)  # the rescue, unchanged
    assert [a.outcome for a in job.attempts] == ["lost"]
    assert processed(queue, "cancelled") == processed(queue, "requeued") == 0
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "no longer held it (it is failed now" in warning.getMessage()
