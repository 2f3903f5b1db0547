"""Cancelling running jobs in the store: one statement that cancels, records the run and
tells the process that runs it; the worker's later writes are fenced off. Run against
MemoryStore and PostgresStore."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import trio

from kyu_trio import JobStatus
from kyu_trio._ports import CancelOutcome, Failure, Lease
from kyu_trio._runtime._listener import parse_cancelled

from .test_store import T0, new


@asynccontextmanager
async def cancels_heard(store: Any, queue: str) -> AsyncIterator[list[str]]:
    """Listen as a serving worker does; yields the ids of ``queue``'s running jobs that
    were cancelled, as the notifications arrive."""
    heard: list[str] = []
    ready = trio.Event()

    def cancelled(batch: list[str]) -> None:
        for payload in batch:
            parsed = parse_cancelled(payload)
            if parsed is not None and parsed[0] == queue:  # the run's database is shared
                heard.append(parsed[1])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.listen_enqueued, ready.set, lambda batch: None, cancelled)
        await ready.wait()
        yield heard
        nursery.cancel_scope.cancel()


async def until(check: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not check():  # noqa: ASYNC110 - a notification from another connection
            await trio.sleep(0.01)


async def running(store: Any, queue: str, worker: str = "w1", **kw: Any) -> Any:
    job = new(queue, **kw)
    await store.insert_jobs([job], T0)
    [claimed] = await store.claim_jobs(queue, [job.id], worker, T0)
    return claimed


async def test_cancelling_a_running_job_records_the_run_and_tells_its_holder(
    store: Any, queue_name: str
) -> None:
    job = await running(store, queue_name)
    at = T0 + timedelta(seconds=3)
    async with cancels_heard(store, queue_name) as heard:
        result = await store.cancel_job(job.id, at)
        await until(lambda: heard == [job.id])
    assert (result.outcome, result.queue) == (CancelOutcome.CANCELLED, queue_name)
    got = await store.get_job(job.id)
    assert got.status is JobStatus.CANCELLED
    assert got.updated_at == at
    assert got.retry_count == 0 and got.error_message is None
    [attempt] = got.attempts
    assert (attempt.attempt, attempt.worker_id, attempt.outcome) == (1, "w1", "cancelled")
    assert (attempt.started_at, attempt.finished_at) == (T0, at)
    assert attempt.error == "Cancelled: cancelled while running"
    # Final: a second cancel is refused and tells nobody.
    assert (await store.cancel_job(job.id, at)).outcome == CancelOutcome.NOT_CANCELLABLE


async def test_a_cancelled_runs_later_writes_are_fenced_off(store: Any, queue_name: str) -> None:
    jobs = [await running(store, queue_name) for _ in range(3)]
    for job in jobs:
        assert (await store.cancel_job(job.id, T0)).outcome == CancelOutcome.CANCELLED
    a, b, c = (Lease(j.id, j.attempt) for j in jobs)
    later = T0 + timedelta(seconds=1)
    # What the worker writes when its handler returns, raises, or shutdown requeues it.
    assert await store.complete_jobs([a], "w1", later, ['"late"']) == []
    failure = Failure(b, JobStatus.FAILED, "E: late", later + timedelta(seconds=1))
    assert await store.fail_jobs([failure], "w1", later) == []
    assert await store.requeue_jobs([c], "w1", later) == []
    for job in jobs:
        got = await store.get_job(job.id)
        assert (got.status, got.result, got.retry_count) == (JobStatus.CANCELLED, None, 0)
        assert [x.outcome for x in got.attempts] == ["cancelled"]  # no second record
    # Never runs again: nothing promotes or claims it.
    assert await store.promote_due(queue_name, later + timedelta(hours=1), 10) == []
    assert await store.claim_jobs(queue_name, [j.id for j in jobs], "w2", later) == []
    assert await store.pending_after(queue_name, 0, 10) == []


async def test_the_heartbeat_tells_which_leases_are_no_longer_held(
    store: Any, queue_name: str
) -> None:
    held, cancelled, done = [await running(store, queue_name) for _ in range(3)]
    theirs = await running(store, queue_name, worker="w2")
    await store.cancel_job(cancelled.id, T0)
    await store.complete_jobs([Lease(done.id, done.attempt)], "w1", T0)
    leases = [Lease(j.id, j.attempt) for j in (held, cancelled, done, theirs)]
    gone = str(uuid.uuid4())
    later = T0 + timedelta(seconds=5)
    lost = await store.heartbeat([*leases, Lease(gone, 1)], "w1", later)
    assert lost == {
        cancelled.id: JobStatus.CANCELLED,
        done.id: JobStatus.COMPLETED,
        theirs.id: JobStatus.RUNNING,  # another worker's lease
        gone: None,
    }
    assert (await store.get_job(held.id)).heartbeat_at == later
    assert (await store.get_job(theirs.id)).heartbeat_at == T0
    # An earlier attempt's lease is not held either, even while the job runs here.
    assert await store.heartbeat([Lease(held.id, 7)], "w1", later) == {held.id: JobStatus.RUNNING}
    assert await store.heartbeat([], "w1", later) == {}


async def test_cancelling_a_job_that_is_not_running_tells_nobody(
    store: Any, queue_name: str
) -> None:
    pending, scheduled = new(queue_name), new(queue_name, due=T0 + timedelta(hours=1))
    await store.insert_jobs([pending, scheduled], T0)
    done = await running(store, queue_name)
    await store.complete_jobs([Lease(done.id, done.attempt)], "w1", T0)
    marker = await running(store, queue_name)
    async with cancels_heard(store, queue_name) as heard:
        for job in (pending, scheduled):
            assert (await store.cancel_job(job.id, T0)).outcome == CancelOutcome.CANCELLED
        assert (await store.cancel_job(done.id, T0)).outcome == CancelOutcome.NOT_CANCELLABLE
        # Notifications arrive in commit order: once the marker's is heard, the others
        # would have been.
        await store.cancel_job(marker.id, T0)
        await until(lambda: bool(heard))
    assert heard == [marker.id]
    for job in (pending, scheduled):
        got = await store.get_job(job.id)
        assert (got.status, got.attempts) == (JobStatus.CANCELLED, ())
    assert (await store.get_job(done.id)).status is JobStatus.COMPLETED


def test_parse_cancelled() -> None:
    assert parse_cancelled("0b5c-1 kyu:my queue") == ("kyu:my queue", "0b5c-1")
    assert parse_cancelled("no-queue") is None
    assert parse_cancelled(" q") is None


async def test_cancels_racing_the_runs_own_writes_end_one_way(store: Any, queue_name: str) -> None:
    # Each cancel is sent at the same moment as the run's completion (or failure), on
    # another connection: exactly one of the two takes effect, and each says so.
    jobs = [await running(store, queue_name) for _ in range(40)]
    cancelled: dict[str, bool] = {}
    written: dict[str, bool] = {}
    later = T0 + timedelta(seconds=1)

    async def cancel(job_id: str) -> None:
        result = await store.cancel_job(job_id, later)
        cancelled[job_id] = result.outcome == CancelOutcome.CANCELLED

    async def end(i: int, job: Any) -> None:
        lease = Lease(job.id, job.attempt)
        if i % 2:
            ids = await store.complete_jobs([lease], "w1", later, ['"done"'])
        else:
            # Its last try (a failure with a retry left would leave the job cancellable).
            ids = await store.fail_jobs([Failure(lease, JobStatus.DEAD, "E: x")], "w1", later)
        written[job.id] = ids == [job.id]

    async with trio.open_nursery() as nursery:
        for i, job in enumerate(jobs):
            nursery.start_soon(cancel, job.id)
            nursery.start_soon(end, i, job)
    for i, job in enumerate(jobs):
        assert cancelled[job.id] != written[job.id], job.id
        got = await store.get_job(job.id)
        outcomes = [a.outcome for a in got.attempts]
        if cancelled[job.id]:
            assert (got.status, got.result, outcomes) == (JobStatus.CANCELLED, None, ["cancelled"])
        elif i % 2:
            assert (got.status, got.result, outcomes) == (
                JobStatus.COMPLETED,
                "done",
                ["completed"],
            )
        else:
            assert (got.status, outcomes) == (JobStatus.DEAD, ["dead"])
