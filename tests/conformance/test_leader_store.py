"""The maintenance lease, against MemoryStore and PostgresStore: one holder at a time,
decided by the store; its term grows with each change of holder."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import trio

from kyu_trio._ports import Fence

from .test_store import T0

TTL = 5.0


async def test_the_first_asker_leads_and_others_wait_for_expiry(
    store: Any, queue_name: str
) -> None:
    assert await store.leader(queue_name) is None
    assert await store.lead(queue_name, "a", T0, TTL) == Fence("a", 1)
    assert await store.lead(queue_name, "b", T0 + timedelta(seconds=4.9), TTL) is None
    # The holder renews its own lease, in the same term.
    assert await store.lead(queue_name, "a", T0 + timedelta(seconds=4), TTL) == Fence("a", 1)
    assert await store.lead(queue_name, "b", T0 + timedelta(seconds=8.9), TTL) is None
    info = await store.leader(queue_name)
    assert (info.holder, info.term, info.expires_at) == ("a", 1, T0 + timedelta(seconds=9))
    # Expired: the next asker takes it, in a new term; the old holder is refused.
    assert await store.lead(queue_name, "b", T0 + timedelta(seconds=9), TTL) == Fence("b", 2)
    assert await store.lead(queue_name, "a", T0 + timedelta(seconds=10), TTL) is None
    # Leases are per queue.
    assert await store.lead(queue_name + "-2", "a", T0, TTL) == Fence("a", 1)


async def test_resigning_frees_the_lease_and_the_term_still_grows(
    store: Any, queue_name: str
) -> None:
    fence = await store.lead(queue_name, "a", T0, TTL)
    # A stale fence (another term) resigns nothing.
    await store.resign(queue_name, Fence("a", fence.term + 1))
    assert await store.lead(queue_name, "b", T0, TTL) is None
    await store.resign(queue_name, fence)
    assert await store.lead(queue_name, "b", T0, TTL) == Fence("b", 2)
    await store.resign(queue_name, Fence("b", 2))
    assert await store.lead(queue_name, "a", T0, TTL) == Fence("a", 3)


async def test_concurrent_askers_elect_one(store: Any, queue_name: str) -> None:
    # An expired lease, and eight processes asking for it at once.
    await store.lead(queue_name, "old", T0, TTL)
    later = T0 + timedelta(seconds=60)
    won: list[Fence] = []

    async def ask(holder: str) -> None:
        fence = await store.lead(queue_name, holder, later, TTL)
        if fence is not None:
            won.append(fence)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(ask, f"p{i}")
    assert len(won) == 1
    assert won[0].term == 2
