"""Unique jobs, against MemoryStore and PostgresStore: one unfinished job per queue and
`unique_key`, decided by the store."""

from __future__ import annotations

from typing import Any

import attrs

from kyu_trio import JobStatus
from kyu_trio._ports import Failure, Lease, Ready

from .test_store import T0, new


async def test_an_unfinished_holder_is_returned_and_nothing_written(
    store: Any, queue_name: str
) -> None:
    first = attrs.evolve(new(queue_name), unique_key="k")
    [ready] = await store.insert_jobs([first], T0)
    assert ready.id == first.id
    pushed: list[list[Ready]] = []
    again = attrs.evolve(new(queue_name), unique_key="k")
    existing: dict[str, str] = {}
    assert await store.insert_jobs([again], T0, pushed.append, existing=existing) == []
    assert existing == {again.id: first.id}
    assert pushed == [[]]
    assert await store.get_job(again.id) is None


async def test_running_and_failed_jobs_hold_their_key_finished_ones_free_it(
    store: Any, queue_name: str
) -> None:
    job = attrs.evolve(new(queue_name, retries=1), unique_key="k")
    await store.insert_jobs([job], T0)
    [claimed] = await store.claim_jobs(queue_name, [job.id], "w", T0)
    existing: dict[str, str] = {}
    await store.insert_jobs([attrs.evolve(new(queue_name), unique_key="k")], T0, existing=existing)
    assert list(existing.values()) == [job.id]  # running
    failure = Failure(Lease(job.id, claimed.attempt), JobStatus.FAILED, "boom", T0)
    assert await store.fail_jobs([failure], "w", T0) == [job.id]
    existing.clear()
    await store.insert_jobs([attrs.evolve(new(queue_name), unique_key="k")], T0, existing=existing)
    assert list(existing.values()) == [job.id]  # failed, awaiting its retry
    [claimed] = await store.claim_jobs(queue_name, [job.id], "w", T0)
    assert await store.complete_jobs([Lease(job.id, claimed.attempt)], "w", T0) == [job.id]
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
    fresh = attrs.evolve(new(queue_name), unique_key="k")
    existing.clear()
    [ready] = await store.insert_jobs([fresh], T0, existing=existing)
    assert (ready.id, existing) == (fresh.id, {})


async def test_a_cancelled_job_frees_its_key(store: Any, queue_name: str) -> None:
    job = attrs.evolve(new(queue_name), unique_key="k")
    await store.insert_jobs([job], T0)
    await store.cancel_job(job.id, T0)
    fresh = attrs.evolve(new(queue_name), unique_key="k")
    existing: dict[str, str] = {}
    assert [r.id for r in await store.insert_jobs([fresh], T0, existing=existing)] == [fresh.id]
    assert existing == {}


async def test_a_batch_writes_one_job_per_key_and_keeps_keyless_jobs(
    store: Any, queue_name: str
) -> None:
    a1, plain1, a2, b, plain2 = (new(queue_name) for _ in range(5))
    a1, a2 = attrs.evolve(a1, unique_key="a"), attrs.evolve(a2, unique_key="a")
    b = attrs.evolve(b, unique_key="b")
    existing: dict[str, str] = {}
    ready = await store.insert_jobs([a1, plain1, a2, b, plain2], T0, existing=existing)
    assert {r.id for r in ready} == {a1.id, plain1.id, b.id, plain2.id}
    assert existing == {a2.id: a1.id}
    assert await store.get_job(a2.id) is None


async def test_keys_are_per_queue_and_scheduled_jobs_hold_them(store: Any, queue_name: str) -> None:
    later = new(queue_name, due=T0.replace(year=2031))
    mine = attrs.evolve(later, unique_key="k")
    theirs = attrs.evolve(new(queue_name + "-other"), unique_key="k")
    existing: dict[str, str] = {}
    assert await store.insert_jobs([mine], T0, existing=existing) == []  # scheduled
    assert [r.id for r in await store.insert_jobs([theirs], T0, existing=existing)] == [theirs.id]
    again = attrs.evolve(new(queue_name), unique_key="k")
    await store.insert_jobs([again], T0, existing=existing)
    assert existing == {again.id: mine.id}


async def test_a_job_shows_its_unique_key(store: Any, queue_name: str) -> None:
    keyed, plain = attrs.evolve(new(queue_name), unique_key="k"), new(queue_name)
    await store.insert_jobs([keyed, plain], T0)
    assert (await store.get_job(keyed.id)).unique_key == "k"
    assert (await store.get_job(plain.id)).unique_key is None
    listed = {j.id: j.unique_key for j in await store.list_jobs(queue_name, None, None, 10)}
    assert listed == {keyed.id: "k", plain.id: None}
    [claimed] = await store.claim_jobs(queue_name, [keyed.id], "w", T0)
    assert claimed.unique_key == "k"


async def test_a_keyed_batch_skips_held_keys_and_keeps_its_order(
    store: Any, queue_name: str
) -> None:
    held = attrs.evolve(new(queue_name), unique_key="held")
    await store.insert_jobs([held], T0)
    other_queue = attrs.evolve(new(queue_name + "-other"), unique_key="held")
    batch = [
        attrs.evolve(new(queue_name), unique_key="k1"),
        attrs.evolve(new(queue_name), unique_key="held"),
        attrs.evolve(new(queue_name), unique_key="k2"),
        attrs.evolve(new(queue_name), unique_key="k1"),
        other_queue,
        attrs.evolve(new(queue_name), unique_key="k3"),
    ]
    existing: dict[str, str] = {}
    ready = await store.insert_jobs(batch, T0, existing=existing)
    assert existing == {batch[1].id: held.id, batch[3].id: batch[0].id}
    written = [batch[0], batch[2], other_queue, batch[5]]
    assert {r.id for r in ready} == {j.id for j in written}
    # Ready in the batch's order: sequence numbers grow along it.
    seq = {r.id: r.seq for r in ready}
    assert [seq[j.id] for j in written] == sorted(seq[j.id] for j in written)
