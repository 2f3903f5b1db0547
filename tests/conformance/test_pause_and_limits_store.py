"""Pausing a queue and limits per job type, against MemoryStore and PostgresStore: the
store decides what a claim may take."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs
import trio

from kyu_trio._ports import Lease, Limit, NewJob

from .test_store import T0, new


def about(when: datetime | None, expected: datetime) -> bool:
    """PostgreSQL stamps a limited claim when it runs: the given time plus the few
    milliseconds the call took."""
    return when is not None and timedelta(0) <= when - expected < timedelta(seconds=0.5)


def typed(queue: str, job_type: str, **kwargs: Any) -> NewJob:
    return attrs.evolve(new(queue, **kwargs), job_type=job_type)


async def test_a_paused_queue_claims_nothing_until_resumed(store: Any, queue_name: str) -> None:
    jobs = [new(queue_name) for _ in range(3)]
    await store.insert_jobs(jobs, T0)
    ids = [j.id for j in jobs]
    assert not await store.is_paused(queue_name)
    await store.set_paused(queue_name, True, T0)
    assert await store.is_paused(queue_name)
    assert await store.claim_jobs(queue_name, ids, "w", T0) == []
    held = await store.held_among(queue_name, ids, T0)
    assert held.paused
    assert (await store.queue_stats(queue_name, T0)).paused
    # Another queue is not paused with it.
    other = new(queue_name + "-other")
    await store.insert_jobs([other], T0)
    assert len(await store.claim_jobs(queue_name + "-other", [other.id], "w", T0)) == 1
    await store.set_paused(queue_name, False, T0)
    assert not await store.is_paused(queue_name)
    assert len(await store.claim_jobs(queue_name, ids, "w", T0)) == 3


async def test_limited_types_are_held_back_and_claimed_within_their_concurrency(
    store: Any, queue_name: str
) -> None:
    await store.set_limits(queue_name, {"a": Limit(concurrency=2)}, ["b"], T0)
    a = [typed(queue_name, "a") for _ in range(4)]
    b = [typed(queue_name, "b") for _ in range(2)]
    await store.insert_jobs(a + b, T0)
    ids = [j.id for j in a + b]
    claimed = await store.claim_jobs(queue_name, ids, "w", T0)
    assert {j.id for j in claimed} == {j.id for j in b}
    held = await store.held_among(queue_name, ids, T0)
    assert not held.paused
    assert held.limited == {"a": [j.id for j in a]}
    got = await store.claim_limited(queue_name, "a", held.limited["a"], "w", T0)
    assert [j.id for j in got.claimed] == [a[0].id, a[1].id]
    assert got.next_start is None
    # Both slots are taken: nothing more until one of them stops running.
    assert (await store.claim_limited(queue_name, "a", [a[2].id, a[3].id], "w", T0)).claimed == []
    first = got.claimed[0]
    await store.complete_jobs([Lease(first.id, first.attempt)], "w", T0)
    more = await store.claim_limited(queue_name, "a", [a[2].id, a[3].id], "w2", T0)
    assert [j.id for j in more.claimed] == [a[2].id]
    assert more.claimed[0].locked_by == "w2"


async def test_a_limited_claim_takes_the_highest_priority_first(
    store: Any, queue_name: str
) -> None:
    await store.set_limits(queue_name, {"a": Limit(concurrency=1)}, [], T0)
    low, high = typed(queue_name, "a", priority=0), typed(queue_name, "a", priority=5)
    await store.insert_jobs([low, high], T0)
    got = await store.claim_limited(queue_name, "a", [low.id, high.id], "w", T0)
    assert [j.id for j in got.claimed] == [high.id]


async def test_a_rate_limit_is_a_sliding_window(store: Any, queue_name: str) -> None:
    await store.set_limits(queue_name, {"a": Limit(rate_count=3, rate_per=10.0)}, [], T0)
    jobs = [typed(queue_name, "a") for _ in range(8)]
    await store.insert_jobs(jobs, T0)
    ids = [j.id for j in jobs]
    first = await store.claim_limited(queue_name, "a", ids[:2], "w", T0)
    assert len(first.claimed) == 2 and first.next_start is None
    t1 = T0 + timedelta(seconds=4)
    second = await store.claim_limited(queue_name, "a", ids[2:], "w", t1)
    assert len(second.claimed) == 1
    # The window is full: the next start is allowed once the oldest start is 10 s old.
    assert about(second.next_start, T0 + timedelta(seconds=10))
    rest = ids[3:]
    assert (
        await store.claim_limited(queue_name, "a", rest, "w", T0 + timedelta(seconds=9))
    ).claimed == []
    at_10 = await store.claim_limited(queue_name, "a", rest, "w", T0 + timedelta(seconds=10.5))
    assert len(at_10.claimed) == 2  # both T0 starts left the window; t1's is in it
    assert about(at_10.next_start, t1 + timedelta(seconds=10))


async def test_removing_a_limit_lets_the_plain_claim_take_the_type(
    store: Any, queue_name: str
) -> None:
    await store.set_limits(queue_name, {"a": Limit(concurrency=1)}, [], T0)
    job = typed(queue_name, "a")
    await store.insert_jobs([job], T0)
    assert await store.claim_jobs(queue_name, [job.id], "w", T0) == []
    await store.set_limits(queue_name, {}, ["a"], T0)
    assert len(await store.claim_jobs(queue_name, [job.id], "w", T0)) == 1


async def test_concurrent_limited_claims_never_exceed_the_limit(
    store: Any, queue_name: str
) -> None:
    await store.set_limits(
        queue_name, {"a": Limit(concurrency=3, rate_count=5, rate_per=60.0)}, [], T0
    )
    jobs = [typed(queue_name, "a") for _ in range(40)]
    await store.insert_jobs(jobs, T0)
    ids = [j.id for j in jobs]
    claimed: list[Any] = []

    async def claim(worker: str, mine: list[str]) -> None:
        claimed.extend((await store.claim_limited(queue_name, "a", mine, worker, T0)).claimed)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(claim, f"w{i}", ids[i * 5 : i * 5 + 5])
    assert len(claimed) == 3
    running = [j for j in await store.list_jobs(queue_name, None, None, 100) if j.locked_by]
    assert len(running) == 3


async def test_a_claim_that_read_the_time_early_counts_from_the_last_start(
    store: Any, queue_name: str
) -> None:
    # A claim reads the time, then may wait for the row lock behind a later claim: its
    # starts are recorded no earlier than the last one, so they stay in order.
    await store.set_limits(queue_name, {"a": Limit(rate_count=2, rate_per=10.0)}, [], T0)
    jobs = [typed(queue_name, "a") for _ in range(3)]
    await store.insert_jobs(jobs, T0)
    later = T0 + timedelta(seconds=5)
    assert len((await store.claim_limited(queue_name, "a", [jobs[0].id], "w", later)).claimed) == 1
    early = await store.claim_limited(queue_name, "a", [jobs[1].id], "w", T0)
    assert len(early.claimed) == 1
    assert about(early.next_start, later + timedelta(seconds=10))
