"""The operations the dashboard and the bulk calls are built on, against MemoryStore and
PostgresStore: cancelling and deleting many jobs in one statement (with exactly the
conditions of the single-job calls), running a cron entry now, and the table of the
processes that serve a queue."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import attrs

from kyu_trio import JobStatus, ProcessInfo
from kyu_trio._cron import new_cron_entry
from kyu_trio._ports import CancelOutcome, CancelResult, Failure, Lease

from .test_cancel_store import cancels_heard, running, until
from .test_store import T0, new


async def one_of_each(store: Any, queue: str) -> dict[str, str]:
    """A job in each status: status name -> its id."""
    pending, scheduled = new(queue), new(queue, due=T0 + timedelta(hours=1))
    dead, failed, done = new(queue, retries=0), new(queue), new(queue)
    await store.insert_jobs([pending, scheduled, dead, failed, done], T0)
    claimed = await store.claim_jobs(queue, [dead.id, failed.id, done.id], "w1", T0)
    assert len(claimed) == 3
    await store.fail_jobs(
        [
            Failure(Lease(dead.id, 1), JobStatus.DEAD, "E: dead"),
            Failure(Lease(failed.id, 1), JobStatus.FAILED, "E: again", T0 + timedelta(hours=1)),
        ],
        "w1",
        T0,
    )
    await store.complete_jobs([Lease(done.id, 1)], "w1", T0)
    run = await running(store, queue)
    cancelled = new(queue)
    await store.insert_jobs([cancelled], T0)
    await store.cancel_job(cancelled.id, T0)
    ids = {
        "pending": pending.id,
        "scheduled": scheduled.id,
        "dead": dead.id,
        "failed": failed.id,
        "completed": done.id,
        "running": run.id,
        "cancelled": cancelled.id,
    }
    for status, job_id in ids.items():
        assert (await store.get_job(job_id)).status.value == status
    return ids


# ---- cancel -------------------------------------------------------------------------------


async def test_cancel_jobs_is_cancel_job_for_many(store: Any, queue_name: str) -> None:
    ids = await one_of_each(store, queue_name)
    unknown = str(uuid.uuid4())
    at = T0 + timedelta(seconds=7)
    async with cancels_heard(store, queue_name) as heard:
        results = await store.cancel_jobs([*ids.values(), unknown, ids["pending"]], at)
        await until(lambda: heard == [ids["running"]])
    cancellable = {"pending", "scheduled", "failed", "running"}
    assert results == {
        job_id: CancelResult(
            CancelOutcome.CANCELLED if status in cancellable else CancelOutcome.NOT_CANCELLABLE,
            queue_name,
        )
        for status, job_id in ids.items()
    }  # the unknown id has no entry
    for status, job_id in ids.items():
        got = await store.get_job(job_id)
        if status in cancellable:
            assert (got.status, got.updated_at) == (JobStatus.CANCELLED, at)
        else:
            assert got.status.value == status  # untouched
    # The running one's run is in its history, as cancel_job records it.
    [attempt] = (await store.get_job(ids["running"])).attempts
    assert (attempt.outcome, attempt.worker_id, attempt.finished_at) == ("cancelled", "w1", at)
    assert await store.cancel_jobs([], at) == {}
    assert await store.cancel_jobs([unknown], at) == {}


async def test_cancel_job_is_the_bulk_statement_with_one_id(store: Any, queue_name: str) -> None:
    ids = await one_of_each(store, queue_name)
    assert await store.cancel_job(ids["pending"], T0) == CancelResult(
        CancelOutcome.CANCELLED, queue_name
    )
    assert await store.cancel_job(ids["completed"], T0) == CancelResult(
        CancelOutcome.NOT_CANCELLABLE, queue_name
    )
    assert (await store.cancel_job(str(uuid.uuid4()), T0)).outcome == CancelOutcome.NOT_FOUND


# ---- delete -------------------------------------------------------------------------------


async def test_delete_jobs_deletes_all_but_running_jobs_with_their_history(
    store: Any, queue_name: str
) -> None:
    ids = await one_of_each(store, queue_name)
    other = new(queue_name + "-other")  # the ids name jobs of any queue
    await store.insert_jobs([other], T0)
    unknown = str(uuid.uuid4())
    deleted = await store.delete_jobs([*ids.values(), other.id, unknown, ids["dead"]])
    assert sorted(deleted) == sorted(
        [(job_id, queue_name) for status, job_id in ids.items() if status != "running"]
        + [(other.id, queue_name + "-other")]
    )
    for status, job_id in ids.items():
        got = await store.get_job(job_id)
        if status == "running":
            assert got is not None and got.status is JobStatus.RUNNING
        else:
            assert got is None
    assert await store.get_jobs([ids["dead"], ids["failed"]]) == []
    # Gone from every read: lists, stats, the resync's pending pages.
    assert [j.id for j in await store.list_jobs(queue_name, None, None, 100)] == [ids["running"]]
    counts = (await store.queue_stats(queue_name, T0)).counts
    assert {s: n for s, n in counts.items() if n} == {JobStatus.RUNNING: 1}
    assert await store.pending_after(queue_name, 0, 100) == []
    assert await store.delete_jobs([]) == []
    assert await store.delete_jobs([unknown, "not-a-uuid"]) == []


async def test_a_deleted_job_is_never_claimed_and_its_history_goes(
    store: Any, queue_name: str
) -> None:
    job = new(queue_name, retries=5)
    await store.insert_jobs([job], T0)
    await store.claim_jobs(queue_name, [job.id], "w1", T0)
    await store.fail_jobs([Failure(Lease(job.id, 1), JobStatus.FAILED, "E: x", T0)], "w1", T0)
    assert len((await store.get_job(job.id)).attempts) == 1
    assert await store.delete_jobs([job.id]) == [(job.id, queue_name)]
    # Its id may still be in the broker, or be claimed by a worker that popped it before:
    # the claim takes nothing, and holds nothing back.
    later = T0 + timedelta(hours=1)
    assert await store.claim_jobs(queue_name, [job.id], "w2", later) == []
    held = await store.held_among(queue_name, [job.id], later)
    assert (held.paused, held.limited) == (False, {})
    assert await store.claimed_by(queue_name, [job.id], "w2") == []
    assert await store.promote_due(queue_name, later, 10) == []
    # A job inserted again with the same id is a new job, without the old history.
    await store.insert_jobs([job], later)
    got = await store.get_job(job.id)
    assert (got.status, got.attempts, got.attempt) == (JobStatus.PENDING, (), 0)


async def test_deleting_a_unique_jobs_holder_frees_its_key(store: Any, queue_name: str) -> None:
    first = attrs.evolve(new(queue_name), unique_key="k")
    await store.insert_jobs([first], T0)
    again = attrs.evolve(new(queue_name), unique_key="k")
    existing: dict[str, str] = {}
    assert await store.insert_jobs([again], T0, existing=existing) == []
    assert existing == {again.id: first.id}
    await store.delete_jobs([first.id])
    existing.clear()
    assert [r.id for r in await store.insert_jobs([again], T0, existing=existing)] == [again.id]
    assert existing == {}


# ---- retry many ---------------------------------------------------------------------------


async def test_retry_jobs_retries_the_dead_and_failed_among_many(
    store: Any, queue_name: str
) -> None:
    ids = await one_of_each(store, queue_name)
    at = T0 + timedelta(seconds=3)
    retried = await store.retry_jobs([*ids.values(), str(uuid.uuid4())], at)
    assert sorted((r.id, q) for r, q in retried) == sorted(
        [(ids["dead"], queue_name), (ids["failed"], queue_name)]
    )
    for status, job_id in ids.items():
        got = await store.get_job(job_id)
        if status in ("dead", "failed"):
            assert (got.status, got.retry_count, got.scheduled_at) == (JobStatus.PENDING, 0, at)
        else:
            assert got.status.value == status


# ---- run a cron entry now -----------------------------------------------------------------


async def test_run_cron_now_enqueues_the_recorded_entry_and_leaves_its_tick(
    store: Any, queue_name: str
) -> None:
    fence = await store.lead(queue_name, "leader", T0, 60.0)
    timed = new_cron_entry(
        "0 * * * *", "report", {"n": 1}, name="timed", priority=7, max_retries=1, job_timeout=9.5
    )
    untimed = new_cron_entry("0 * * * *", "sync", None, name="untimed")
    assert await store.sync_cron(queue_name, [timed, untimed], T0, fence)
    before = {s.name: s for s in await store.cron_states(queue_name)}

    at = T0 + timedelta(minutes=17)
    job_id = str(uuid.uuid4())
    ready = await store.run_cron_now(queue_name, "timed", job_id, at, 30.0)
    assert (ready.id, ready.priority) == (job_id, 7)
    job = await store.get_job(job_id)
    assert (job.queue, job.job_type, job.payload, job.status) == (
        queue_name,
        "report",
        {"n": 1},
        JobStatus.PENDING,
    )
    assert (job.priority, job.max_retries, job.job_timeout) == (7, 1, 9.5)
    assert (job.scheduled_at, job.created_at, job.retry_count) == (at, at, 0)
    # Ready like any enqueued job: the next pending one in seq order, and claimable.
    assert [r.id for r in await store.pending_after(queue_name, 0, 10)] == [job_id]
    assert [j.id for j in await store.claim_jobs(queue_name, [job_id], "w1", at)] == [job_id]

    # The caller's default timeout where the entry has none.
    other = await store.run_cron_now(queue_name, "untimed", str(uuid.uuid4()), at, 42.0)
    assert (await store.get_job(other.id)).job_timeout == 42.0
    assert other.seq > ready.seq
    # The schedule goes on as before: no last tick moved, nothing else changed.
    assert {s.name: s for s in await store.cron_states(queue_name)} == before
    # Unknown names, and other queues' entries, are not found (and write nothing).
    missing = str(uuid.uuid4())
    assert await store.run_cron_now(queue_name, "nope", missing, at, 30.0) is None
    assert await store.run_cron_now(queue_name + "-2", "timed", missing, at, 30.0) is None
    assert await store.get_job(missing) is None


# ---- the processes serving a queue ----------------------------------------------------------


def process(name: str, started: timedelta, seen: timedelta, workers: int = 4) -> ProcessInfo:
    return ProcessInfo(
        process_id=f"host-{name}:{len(name)}:abcd1234",
        host=f"host-{name}",
        pid=1000 + len(name),
        workers=workers,
        started_at=T0 + started,
        last_seen=T0 + seen,
    )


async def test_processes_are_recorded_refreshed_and_expire(store: Any, queue_name: str) -> None:
    a = process("a", timedelta(0), timedelta(0))
    b = process("bb", timedelta(seconds=1), timedelta(seconds=1), workers=10)
    await store.record_process(queue_name, b, 15.0)
    await store.record_process(queue_name, a, 15.0)
    await store.record_process(queue_name + "-2", a, 15.0)
    now = T0 + timedelta(seconds=2)
    assert await store.processes(queue_name, now) == [a, b]  # oldest first, none leads
    # A refresh moves last_seen and the expiry; the other fields are written as given.
    a2 = attrs.evolve(a, last_seen=T0 + timedelta(seconds=10), workers=5)
    await store.record_process(queue_name, a2, 15.0)
    assert await store.processes(queue_name, T0 + timedelta(seconds=16)) == [a2]  # b expired
    assert await store.processes(queue_name, T0 + timedelta(seconds=25)) == []
    # The leader is the lease's holder, while its lease runs; `leader` is never stored.
    await store.record_process(queue_name, attrs.evolve(b, leader=True), 15.0)
    assert [p.leader for p in await store.processes(queue_name, now)] == [False, False]
    fence = await store.lead(queue_name, b.process_id, now, 5.0)
    assert [p.leader for p in await store.processes(queue_name, now)] == [False, True]
    assert [p.leader for p in await store.processes(queue_name, now + timedelta(seconds=5))] == [
        False,
        False,
    ]
    await store.lead(queue_name, b.process_id, now, 5.0)
    await store.resign(queue_name, fence)
    assert [p.leader for p in await store.processes(queue_name, now)] == [False, False]
    # A process that stops deletes its row; other queues' rows are their own.
    await store.remove_process(queue_name, a.process_id)
    await store.remove_process(queue_name, "no such process")
    assert await store.processes(queue_name, now) == [b]
    assert await store.processes(queue_name + "-2", now) == [a]


async def test_prune_processes_deletes_rows_expired_before_a_time(
    store: Any, queue_name: str
) -> None:
    old = process("old", timedelta(0), timedelta(0))  # expires at T0 + 15 s
    recent = process("recent", timedelta(0), timedelta(minutes=30))
    await store.record_process(queue_name, old, 15.0)
    await store.record_process(queue_name, recent, 15.0)
    await store.record_process(queue_name + "-2", old, 15.0)
    assert await store.prune_processes(queue_name, T0 + timedelta(seconds=15)) == 0
    assert await store.prune_processes(queue_name, T0 + timedelta(minutes=20)) == 1
    assert await store.processes(queue_name, T0 + timedelta(minutes=30)) == [recent]
    assert await store.prune_processes(queue_name, T0 + timedelta(minutes=20)) == 0
    # Other queues' rows are pruned by their own leaders.
    assert await store.processes(queue_name + "-2", T0) == [old]
