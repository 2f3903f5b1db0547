"""`Store.set_progress`, run against MemoryStore and PostgresStore: fenced by the run's
lease, kept once the job has finished."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kyu_trio import JobStatus
from kyu_trio._ports import Failure, Lease, Progress
from kyu_trio._validation import encode_progress

from .test_store import T0, new


def progress(job_id: str, attempt: int, value: Any) -> Progress:
    return Progress(Lease(job_id, attempt), encode_progress(value))


async def test_progress_is_written_only_under_the_runs_lease(store: Any, queue_name: str) -> None:
    job, other = new(queue_name), new(queue_name)
    await store.insert_jobs([job, other], T0)
    await store.claim_jobs(queue_name, [job.id, other.id], "w1", T0)

    written = await store.set_progress(
        [
            progress(job.id, 1, {"done": 3, "total": 10, "note": "ünïcode ✓"}),
            progress(other.id, 2, "a later attempt: not this run"),
        ],
        "w1",
    )
    assert written == [job.id]
    assert (await store.get_job(job.id)).progress == {"done": 3, "total": 10, "note": "ünïcode ✓"}
    assert (await store.get_job(other.id)).progress is None

    # Another worker, an unknown job: nothing written.
    assert await store.set_progress([progress(job.id, 1, 99)], "w2") == []
    missing = new(queue_name).id
    assert await store.set_progress([progress(missing, 1, 99)], "w1") == []
    assert (await store.get_job(job.id)).progress["done"] == 3

    # Listings carry it too (the same row mapping as inspect).
    assert (await store.get_jobs([job.id]))[0].progress["done"] == 3
    listed = {j.id: j for j in await store.list_jobs(queue_name, None, None, 10)}
    assert listed[job.id].progress["total"] == 10


async def test_a_finished_job_keeps_its_last_progress(store: Any, queue_name: str) -> None:
    done, dead = new(queue_name), new(queue_name, retries=0)
    await store.insert_jobs([done, dead], T0)
    await store.claim_jobs(queue_name, [done.id, dead.id], "w1", T0)
    await store.set_progress([progress(done.id, 1, 10), progress(dead.id, 1, 1)], "w1")
    assert await store.complete_jobs([Lease(done.id, 1)], "w1", T0) == [done.id]
    failure = Failure(Lease(dead.id, 1), JobStatus.DEAD, "boom")
    assert await store.fail_jobs([failure], "w1", T0) == [dead.id]

    assert (await store.get_job(done.id)).progress == 10
    # The run's last value may land just after its outcome: same lease, same run.
    late = await store.set_progress([progress(done.id, 1, 100), progress(dead.id, 1, 2)], "w1")
    assert sorted(late) == sorted([done.id, dead.id])
    finished = await store.get_job(done.id)
    assert (finished.status, finished.progress) == (JobStatus.COMPLETED, 100)
    assert (await store.get_job(dead.id)).progress == 2


async def test_a_later_run_is_never_overwritten_by_an_earlier_one(
    store: Any, queue_name: str
) -> None:
    job = new(queue_name)
    await store.insert_jobs([job], T0)
    await store.claim_jobs(queue_name, [job.id], "w1", T0)
    await store.set_progress([progress(job.id, 1, "first run")], "w1")
    await store.requeue_jobs([Lease(job.id, 1)], "w1", T0)
    # A new run keeps the previous run's progress until it reports its own.
    again = await store.claim_jobs(queue_name, [job.id], "w2", T0 + timedelta(seconds=1))
    assert again[0].attempt == 2
    assert (await store.get_job(job.id)).progress == "first run"

    # The first worker's late report (lease of attempt 1) is fenced off.
    assert await store.set_progress([progress(job.id, 1, "stale")], "w1") == []
    assert await store.set_progress([progress(job.id, 2, {"step": 1})], "w2") == [job.id]
    assert (await store.get_job(job.id)).progress == {"step": 1}
    assert await store.set_progress([], "w2") == []
