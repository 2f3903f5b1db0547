"""One suite, run against MemoryStore and PostgresStore, so the fake cannot drift."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from kyu_trio import JobStatus
from kyu_trio._ports import CancelOutcome, Failure, Lease, NewJob
from kyu_trio._validation import encode_payload, encode_result

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def new(
    queue: str, *, due: datetime = T0, priority: int = 0, retries: int = 3, payload: str = '"p"'
) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()),
        queue=queue,
        job_type="t",
        payload=payload,
        priority=priority,
        max_retries=retries,
        scheduled_at=due,
        job_timeout=10.0,
        status=JobStatus.PENDING if due <= T0 else JobStatus.SCHEDULED,
    )


async def test_insert_returns_pending_in_order_with_increasing_seq(
    store: Any, queue_name: str
) -> None:
    jobs = [new(queue_name), new(queue_name, due=T0 + timedelta(hours=1)), new(queue_name)]
    ready = await store.insert_jobs(jobs, T0)
    assert [r.id for r in ready] == [jobs[0].id, jobs[2].id]
    assert ready[0].seq < ready[1].seq
    got = await store.get_job(jobs[1].id)
    assert got.status is JobStatus.SCHEDULED
    assert got.queue == queue_name
    assert got.created_at == T0


async def test_claim_is_conditional(store: Any, queue_name: str) -> None:
    due, later = new(queue_name), new(queue_name, due=T0 + timedelta(seconds=5))
    await store.insert_jobs([due, later], T0)
    claimed = await store.claim_jobs(queue_name, [due.id, later.id, "garbage"], "w1", T0)
    assert [j.id for j in claimed] == [due.id]
    assert claimed[0].status is JobStatus.RUNNING
    assert claimed[0].attempt == 1
    assert claimed[0].locked_by == "w1"
    # Already running: a second claim (another worker, a duplicate id) gets nothing.
    assert await store.claim_jobs(queue_name, [due.id], "w2", T0) == []
    # Other queue: never.
    assert await store.claim_jobs("other-queue", [later.id], "w1", T0 + timedelta(hours=1)) == []


async def test_pending_job_is_claimable_whatever_its_scheduled_at(
    store: Any, queue_name: str
) -> None:
    # A producer whose clock runs 5 ms ahead writes a pending job "due" in the worker's
    # future: it is pending, so it is due, and the claim must take it.
    ahead = attrs.evolve(new(queue_name), scheduled_at=T0 + timedelta(milliseconds=5))
    await store.insert_jobs([ahead], T0)
    assert (await store.get_job(ahead.id)).status is JobStatus.PENDING
    claimed = await store.claim_jobs(queue_name, [ahead.id], "w1", T0)
    assert [j.id for j in claimed] == [ahead.id]


async def test_claimed_by_finds_what_a_lost_claim_took(store: Any, queue_name: str) -> None:
    mine, theirs, idle = new(queue_name), new(queue_name), new(queue_name)
    await store.insert_jobs([mine, theirs, idle], T0)
    await store.claim_jobs(queue_name, [mine.id], "w1", T0)
    await store.claim_jobs(queue_name, [theirs.id], "w2", T0)
    ids = [mine.id, theirs.id, idle.id, "garbage"]
    found = await store.claimed_by(queue_name, ids, "w1")
    assert [(j.id, j.status, j.locked_by, j.attempt) for j in found] == [
        (mine.id, JobStatus.RUNNING, "w1", 1)
    ]
    assert found[0] == await store.get_job(mine.id)
    assert await store.claimed_by("other-queue", ids, "w1") == []


async def test_claimed_job_equals_the_row(store: Any, queue_name: str) -> None:
    # The claim fills in the columns it set from its own parameters instead of reading
    # them back: what it returns must still be exactly the row.
    job = new(queue_name, retries=5)
    await store.insert_jobs([job], T0)
    later = T0 + timedelta(seconds=3)
    [claimed] = await store.claim_jobs(queue_name, [job.id], "w1", later)
    assert claimed == await store.get_job(job.id)
    assert (claimed.locked_at, claimed.heartbeat_at, claimed.updated_at) == (later,) * 3
    assert (claimed.queue, claimed.max_retries, claimed.completed_at) == (queue_name, 5, None)


async def test_claim_refuses_cancelled(store: Any, queue_name: str) -> None:
    job = new(queue_name)
    await store.insert_jobs([job], T0)
    result = await store.cancel_job(job.id, T0)
    assert result.outcome == CancelOutcome.CANCELLED
    assert result.queue == queue_name
    assert await store.claim_jobs(queue_name, [job.id], "w", T0) == []
    assert (await store.cancel_job(job.id, T0)).outcome == CancelOutcome.NOT_CANCELLABLE
    assert (await store.cancel_job(str(uuid.uuid4()), T0)).outcome == CancelOutcome.NOT_FOUND


async def test_writes_are_fenced_by_lease(store: Any, queue_name: str) -> None:
    job = new(queue_name)
    await store.insert_jobs([job], T0)
    [claimed] = await store.claim_jobs(queue_name, [job.id], "w1", T0)
    stale = Lease(job.id, claimed.attempt - 1)
    assert await store.complete_jobs([stale], "w1", T0) == []
    assert await store.complete_jobs([Lease(job.id, claimed.attempt)], "w2", T0) == []
    assert await store.complete_jobs([Lease(job.id, claimed.attempt)], "w1", T0) == [job.id]
    got = await store.get_job(job.id)
    assert got.status is JobStatus.COMPLETED
    assert got.completed_at == T0
    # Completed is final: a late failure write changes nothing.
    failure = Failure(Lease(job.id, claimed.attempt), JobStatus.DEAD, "late")
    assert await store.fail_jobs([failure], "w1", T0) == []
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED


async def test_fail_then_promote_then_dead(store: Any, queue_name: str) -> None:
    job = new(queue_name, retries=1)
    await store.insert_jobs([job], T0)
    [c] = await store.claim_jobs(queue_name, [job.id], "w", T0)
    due = T0 + timedelta(seconds=1)
    failure = Failure(Lease(job.id, c.attempt), JobStatus.FAILED, "E: 1", due)
    assert await store.fail_jobs([failure], "w", T0) == [job.id]
    got = await store.get_job(job.id)
    assert (got.status, got.retry_count, got.error_message) == (JobStatus.FAILED, 1, "E: 1")
    assert got.scheduled_at == due
    assert await store.claim_jobs(queue_name, [job.id], "w", T0) == []  # not due yet
    assert await store.promote_due(queue_name, T0, 10) == []
    [ready] = await store.promote_due(queue_name, due, 10)
    assert ready.id == job.id
    assert (await store.get_job(job.id)).status is JobStatus.PENDING
    [c2] = await store.claim_jobs(queue_name, [job.id], "w", due)
    assert c2.attempt == 2
    dead = Failure(Lease(job.id, c2.attempt), JobStatus.DEAD, "E: 2")
    assert await store.fail_jobs([dead], "w", due) == [job.id]
    got = await store.get_job(job.id)
    assert (got.status, got.retry_count, got.error_message) == (JobStatus.DEAD, 1, "E: 2")
    assert [j.id for j in await store.dead_jobs(queue_name, 10)] == [job.id]


async def test_promote_is_bounded_and_in_due_order(store: Any, queue_name: str) -> None:
    jobs = [new(queue_name, due=T0 + timedelta(seconds=s)) for s in (3, 1, 2)]
    await store.insert_jobs(jobs, T0)
    first = await store.promote_due(queue_name, T0 + timedelta(seconds=10), 2)
    assert [r.id for r in first] == [jobs[1].id, jobs[2].id]
    assert first[0].seq < first[1].seq
    rest = await store.promote_due(queue_name, T0 + timedelta(seconds=10), 2)
    assert [r.id for r in rest] == [jobs[0].id]


async def test_requeue_keeps_retry_count_and_gets_new_seq(store: Any, queue_name: str) -> None:
    job = new(queue_name)
    [r0] = await store.insert_jobs([job], T0)
    [c] = await store.claim_jobs(queue_name, [job.id], "w", T0)
    [r1] = await store.requeue_jobs([Lease(job.id, c.attempt)], "w", T0)
    assert r1.seq > r0.seq
    got = await store.get_job(job.id)
    assert (got.status, got.retry_count) == (JobStatus.PENDING, 0)


async def test_stale_jobs_respects_heartbeat_and_job_timeout(store: Any, queue_name: str) -> None:
    a, b = new(queue_name, retries=1), new(queue_name, retries=0)
    await store.insert_jobs([a, b], T0)
    await store.claim_jobs(queue_name, [a.id, b.id], "w", T0)
    later = T0 + timedelta(seconds=30)
    await store.heartbeat([Lease(a.id, 1)], "w", later)
    now = T0 + timedelta(seconds=40)
    # Stale means: heartbeat older than 20 s ago. Only b qualifies.
    [stale] = await store.stale_jobs(queue_name, now, now - timedelta(seconds=20), 10)
    assert (stale.id, stale.status, stale.locked_by, stale.attempt) == (
        b.id,
        JobStatus.RUNNING,
        "w",
        1,
    )
    much_later = T0 + timedelta(seconds=100)
    both = await store.stale_jobs(queue_name, much_later, much_later - timedelta(seconds=20), 10)
    assert [j.id for j in both] == [b.id, a.id]  # stalest heartbeat first
    assert [
        j.id
        for j in await store.stale_jobs(
            queue_name, much_later, much_later - timedelta(seconds=20), 1
        )
    ] == [b.id]
    # Only reads: both are still running under the lost worker's lease.
    assert {(await store.get_job(j.id)).status for j in both} == {JobStatus.RUNNING}


async def test_a_rescue_is_the_failure_write_fenced_by_the_lost_lease(
    store: Any, queue_name: str
) -> None:
    job = new(queue_name, retries=1)
    await store.insert_jobs([job], T0)
    await store.claim_jobs(queue_name, [job.id], "lost", T0)
    due = T0 + timedelta(seconds=50)
    failure = Failure(
        Lease(job.id, 1), JobStatus.FAILED, "worker lost while running (attempt 1)", due
    )
    # Fenced by the job's own lease: another worker id or another attempt writes nothing.
    assert await store.fail_jobs([failure], "other", T0) == []
    assert await store.fail_jobs([attrs.evolve(failure, lease=Lease(job.id, 2))], "lost", T0) == []
    assert await store.fail_jobs([failure], "lost", T0) == [job.id]
    got = await store.get_job(job.id)
    assert (got.status, got.retry_count, got.scheduled_at, got.error_message) == (
        JobStatus.FAILED,
        1,
        due,
        "worker lost while running (attempt 1)",
    )
    # The lost worker's late write is fenced, and the rescued job is no longer stale.
    assert await store.complete_jobs([Lease(job.id, 1)], "lost", due) == []
    assert await store.stale_jobs(queue_name, due, due, 10) == []


async def test_pending_after_pages_by_seq(store: Any, queue_name: str) -> None:
    jobs = [new(queue_name) for _ in range(5)]
    ready = await store.insert_jobs(jobs, T0)
    page = await store.pending_after(queue_name, 0, 3)
    assert [r.id for r in page] == [r.id for r in ready[:3]]
    page2 = await store.pending_after(queue_name, page[-1].seq, 3)
    assert [r.id for r in page2] == [r.id for r in ready[3:]]


async def test_insert_again_keeps_what_the_lost_attempt_wrote(store: Any, queue_name: str) -> None:
    # An enqueue whose answer was lost is repeated with the same ids: never a second row.
    one = [new(queue_name)]
    batch = [new(queue_name), new(queue_name, due=T0 + timedelta(hours=1)), new(queue_name)]
    first_one = await store.insert_jobs(one, T0)
    first_batch = await store.insert_jobs(batch, T0)
    assert await store.insert_jobs(one, T0, again=True) == first_one
    assert await store.insert_jobs(batch, T0, again=True) == first_batch
    # A repeat of an insert that did not happen writes it.
    fresh = [new(queue_name), new(queue_name)]
    pushed: list[Any] = []
    ready = await store.insert_jobs(fresh, T0, pushed.extend, again=True)
    assert [r.id for r in ready] == [j.id for j in fresh] == [r.id for r in pushed]
    # A job the lost attempt wrote and a worker already claimed is not pushed again.
    await store.claim_jobs(queue_name, [one[0].id], "w1", T0)
    assert await store.insert_jobs(one, T0, again=True) == []
    stats = await store.queue_stats(queue_name, T0)
    assert sum(stats.counts.values()) == 6


JSON_VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**62),
    2.5,
    "",
    "text with \x00, \n and ü",
    '{"looks": "like json"}',
    [1, "a", None, [[]]],
    {"nested": {"list": [1, {"x": False}]}, "empty": {}},
]


async def test_payloads_are_json_values_that_come_back_decoded(store: Any, queue_name: str) -> None:
    jobs = [new(queue_name, payload=encode_payload(v, 10_000)) for v in JSON_VALUES]
    await store.insert_jobs(jobs[:1], T0)  # one row: INSERT; more: COPY
    await store.insert_jobs(jobs[1:], T0)
    for job, value in zip(jobs, JSON_VALUES, strict=True):
        got = await store.get_job(job.id)
        assert got.payload == value
        assert type(got.payload) is type(value)
    claimed = await store.claim_jobs(queue_name, [j.id for j in jobs], "w", T0)
    assert [j.payload for j in claimed] == JSON_VALUES


async def test_results_are_stored_with_the_completion(store: Any, queue_name: str) -> None:
    values = [v for v in JSON_VALUES if "\x00" not in str(v)] + [{"b": 1, "a": [2.5, "é"]}]
    jobs = [new(queue_name) for _ in values]
    await store.insert_jobs(jobs, T0)
    await store.claim_jobs(queue_name, [j.id for j in jobs], "w", T0)
    leases = [Lease(j.id, 1) for j in jobs]
    results = [None if v is None else encode_result(v, 10_000) for v in values]
    assert sorted(await store.complete_jobs(leases, "w", T0, results)) == sorted(j.id for j in jobs)
    for job, value in zip(jobs, values, strict=True):
        assert (await store.get_job(job.id)).result == value
    # Without results (the hot path), and through get_jobs: any queue, unknown ids skipped.
    plain = new(queue_name)
    await store.insert_jobs([plain], T0)
    await store.claim_jobs(queue_name, [plain.id], "w", T0)
    assert await store.complete_jobs([Lease(plain.id, 1)], "w", T0) == [plain.id]
    unknown = str(uuid.uuid4())
    found = await store.get_jobs([jobs[-1].id, unknown, plain.id, "not-a-uuid"])
    by_id = {j.id: j for j in found}
    assert set(by_id) == {jobs[-1].id, plain.id}
    assert by_id[jobs[-1].id].result == values[-1]
    assert by_id[plain.id].result is None
    assert by_id[plain.id].status is JobStatus.COMPLETED
    assert await store.get_jobs([]) == []


async def test_attempts_record_failures_and_derive_the_completion(
    store: Any, queue_name: str
) -> None:
    job = new(queue_name)
    await store.insert_jobs([job], T0)
    times = [T0 + timedelta(seconds=10 * i) for i in range(6)]
    for n, worker in ((1, "w1"), (2, "w2")):
        claim_at, fail_at = times[2 * n - 2], times[2 * n - 1]
        await store.claim_jobs(queue_name, [job.id], worker, claim_at)
        failure = Failure(
            Lease(job.id, n), JobStatus.FAILED, f"ValueError: {n}", fail_at, traceback=f"tb {n}"
        )
        assert await store.fail_jobs([failure], worker, fail_at) == [job.id]
        await store.promote_due(queue_name, fail_at, 10)
    await store.claim_jobs(queue_name, [job.id], "w3", times[4])
    assert await store.complete_jobs([Lease(job.id, 3)], "w3", times[5]) == [job.id]
    got = await store.get_job(job.id)
    assert [
        (a.attempt, a.worker_id, a.started_at, a.finished_at, a.outcome, a.error, a.traceback)
        for a in got.attempts
    ] == [
        (1, "w1", times[0], times[1], "failed", "ValueError: 1", "tb 1"),
        (2, "w2", times[2], times[3], "failed", "ValueError: 2", "tb 2"),
        (3, "w3", times[4], times[5], "completed", None, None),
    ]
    # Listings leave the history out.
    listed = await store.list_jobs(queue_name, None, None, 10)
    assert [j.attempts for j in listed] == [()]


async def test_attempts_record_requeues_rescues_and_dead_ends(store: Any, queue_name: str) -> None:
    job = new(queue_name, retries=1)
    await store.insert_jobs([job], T0)
    await store.claim_jobs(queue_name, [job.id], "w1", T0)
    await store.requeue_jobs([Lease(job.id, 1)], "w1", T0)
    await store.claim_jobs(queue_name, [job.id], "w2", T0)
    lost = Failure(Lease(job.id, 2), JobStatus.FAILED, "worker lost", T0, outcome="lost")
    await store.fail_jobs([lost], "w2", T0)
    await store.promote_due(queue_name, T0, 10)
    await store.claim_jobs(queue_name, [job.id], "w3", T0)
    dead = Failure(Lease(job.id, 3), JobStatus.DEAD, "TimeoutError: t", outcome="timed_out")
    await store.fail_jobs([dead], "w3", T0)
    got = await store.get_job(job.id)
    assert [(a.attempt, a.outcome, a.error) for a in got.attempts] == [
        (1, "requeued", None),
        (2, "lost", "worker lost"),
        (3, "timed_out", "TimeoutError: t"),
    ]
    assert got.status is JobStatus.DEAD
    # A failure's outcome follows its status unless said otherwise.
    assert Failure(Lease(job.id, 1), JobStatus.DEAD, "x").outcome == "dead"
    assert Failure(Lease(job.id, 1), JobStatus.FAILED, "x", T0).outcome == "failed"
    # Purging the job purges its history with it.
    assert await store.purge(queue_name, [JobStatus.DEAD], T0 + timedelta(days=1), 10) == 1
    assert await store.get_job(job.id) is None


async def test_only_the_last_attempts_are_kept(store: Any, queue_name: str) -> None:
    store._attempts_kept = 3
    job = new(queue_name, retries=100)
    await store.insert_jobs([job], T0)
    for n in range(1, 6):
        await store.claim_jobs(queue_name, [job.id], "w", T0)
        failure = Failure(Lease(job.id, n), JobStatus.FAILED, f"E: {n}", T0)
        await store.fail_jobs([failure], "w", T0)
        await store.promote_due(queue_name, T0, 10)
    got = await store.get_job(job.id)
    assert [a.attempt for a in got.attempts] == [3, 4, 5]
    await store.claim_jobs(queue_name, [job.id], "w", T0)
    await store.complete_jobs([Lease(job.id, 6)], "w", T0)
    got = await store.get_job(job.id)
    assert [(a.attempt, a.outcome) for a in got.attempts] == [
        (4, "failed"),
        (5, "failed"),
        (6, "completed"),
    ]
