"""`Store.prune`, the pruner's batch, on MemoryStore and PostgresStore: which rows one
call deletes (status, queue, age, limit, oldest first), and that their history goes too."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import attrs
import pytest

from kyu_trio import JobStatus, KyuError
from kyu_trio._ports import Failure, Lease, NewJob

from .test_store import T0, new

H = timedelta(hours=1)


async def _finished(store: Any, queue: str, status: JobStatus, at: Any) -> NewJob:
    """A job of ``queue`` that reached ``status`` at ``at``, after a failed first run."""
    job = new(queue, retries=1)
    await store.insert_jobs([job], T0)
    [c1] = await store.claim_jobs(queue, [job.id], "w", T0)
    failed = Failure(Lease(job.id, c1.attempt), JobStatus.FAILED, "E: first", T0)
    assert await store.fail_jobs([failed], "w", T0) == [job.id]
    if status is JobStatus.CANCELLED:
        assert (await store.cancel_job(job.id, at)).queue == queue
        return job
    await store.promote_due(queue, T0, 10)
    [c2] = await store.claim_jobs(queue, [job.id], "w", T0)
    lease = Lease(job.id, c2.attempt)
    if status is JobStatus.COMPLETED:
        assert await store.complete_jobs([lease], "w", at) == [job.id]
    else:
        assert await store.fail_jobs([Failure(lease, JobStatus.DEAD, "E: last")], "w", at) == [
            job.id
        ]
    return job


async def _ids(store: Any, queue: str) -> set[str]:
    return {j.id for j in await store.list_jobs(queue, None, None, 1000)}


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.DEAD])
async def test_prune_deletes_what_finished_before_the_cutoff_oldest_first(
    store: Any, queue_name: str, status: JobStatus
) -> None:
    jobs = [await _finished(store, queue_name, status, T0 + n * H) for n in (3, 1, 2, 4)]
    by_age = [jobs[1], jobs[2], jobs[0], jobs[3]]  # finished at T0+1h, +2h, +3h, +4h
    # Strictly before the cutoff: the job finished at T0+4h stays.
    cutoff = T0 + 4 * H
    assert await store.prune(queue_name, status, cutoff, 1) == 1
    assert await _ids(store, queue_name) == {j.id for j in by_age[1:]}
    assert await store.get_job(by_age[0].id) is None
    assert await store.prune(queue_name, status, cutoff, 10) == 2
    assert await _ids(store, queue_name) == {by_age[3].id}
    assert await store.prune(queue_name, status, cutoff, 10) == 0
    survivor = await store.get_job(by_age[3].id)
    assert survivor.status is status and survivor.attempts  # history intact


async def test_prune_touches_only_its_queue_and_status(store: Any, queue_name: str) -> None:
    other_queue = f"{queue_name}-other"
    late = T0 + 10 * H
    completed = await _finished(store, queue_name, JobStatus.COMPLETED, T0)
    dead = await _finished(store, queue_name, JobStatus.DEAD, T0)
    cancelled = await _finished(store, queue_name, JobStatus.CANCELLED, T0)
    elsewhere = await _finished(store, other_queue, JobStatus.COMPLETED, T0)
    pending, scheduled = new(queue_name), new(queue_name, due=T0 + H)
    running = new(queue_name)
    await store.insert_jobs([pending, scheduled, running], T0)
    await store.claim_jobs(queue_name, [running.id], "w", T0)
    unfinished = {pending.id, scheduled.id, running.id}

    assert await store.prune(queue_name, JobStatus.COMPLETED, late, 100) == 1
    assert await _ids(store, queue_name) == unfinished | {dead.id, cancelled.id}
    assert await store.prune(queue_name, JobStatus.DEAD, late, 100) == 1
    assert await store.prune(queue_name, JobStatus.CANCELLED, late, 100) == 1
    assert await _ids(store, queue_name) == unfinished
    assert await _ids(store, other_queue) == {elsewhere.id}
    assert completed.id not in await _ids(store, queue_name)


async def test_completed_jobs_age_from_completion_not_from_their_last_update(
    store: Any, queue_name: str
) -> None:
    job = await _finished(store, queue_name, JobStatus.COMPLETED, T0 + 2 * H)
    got = await store.get_job(job.id)
    assert got.completed_at == T0 + 2 * H
    assert await store.prune(queue_name, JobStatus.COMPLETED, T0 + 2 * H, 10) == 0
    assert await store.prune(queue_name, JobStatus.COMPLETED, T0 + 3 * H, 10) == 1


async def test_a_dead_job_retried_is_no_longer_prunable(store: Any, queue_name: str) -> None:
    job = await _finished(store, queue_name, JobStatus.DEAD, T0)
    assert [r.id for r, _ in await store.retry_jobs([job.id], T0 + H)] == [job.id]
    assert await store.prune(queue_name, JobStatus.DEAD, T0 + 10 * H, 10) == 0
    assert (await store.get_job(job.id)).status is JobStatus.PENDING


async def test_a_pruned_unique_job_leaves_its_key_free(store: Any, queue_name: str) -> None:
    keyed = NewJob(
        id=str(uuid.uuid4()),
        queue=queue_name,
        job_type="t",
        payload='"p"',
        priority=0,
        max_retries=0,
        scheduled_at=T0,
        job_timeout=10.0,
        status=JobStatus.PENDING,
        unique_key="k",
    )
    await store.insert_jobs([keyed], T0)
    [claimed] = await store.claim_jobs(queue_name, [keyed.id], "w", T0)
    await store.complete_jobs([Lease(keyed.id, claimed.attempt)], "w", T0)
    assert await store.prune(queue_name, JobStatus.COMPLETED, T0 + H, 10) == 1
    again = attrs.evolve(keyed, id=str(uuid.uuid4()))
    existing: dict[str, str] = {}
    assert [r.id for r in await store.insert_jobs([again], T0 + H, existing=existing)] == [again.id]
    assert existing == {}


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.RUNNING, JobStatus.FAILED])
async def test_only_final_states_can_be_pruned(
    store: Any, queue_name: str, status: JobStatus
) -> None:
    await store.insert_jobs([new(queue_name)], T0)
    with pytest.raises(KyuError, match="pruned"):
        await store.prune(queue_name, status, T0 + H, 10)
    assert len(await _ids(store, queue_name)) == 1
