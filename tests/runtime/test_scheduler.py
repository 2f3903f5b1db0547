"""The scheduler's promotion of a backlog, on the in-memory adapters: batches go to Redis
while the next batch is promoted, in due order, and a failed push is an outage (a
`KyuConnectionError`, as before), not an exception group."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
import trio

from kyu_trio import EnqueueRequest, KyuConnectionError
from kyu_trio._ports import Ready
from kyu_trio._runtime._scheduler import BATCH, Scheduler

from .conftest import Harness


async def _backlog(harness: Harness, n: int) -> tuple[Any, list[str]]:
    queue = harness.queue()
    await queue.connect()
    soon = harness.clock.now() + timedelta(seconds=1)
    # Due one after another, so that due order is known: the first enqueued, first due.
    ids = await queue.enqueue_many(
        [EnqueueRequest("noop", i, scheduled_at=soon + timedelta(microseconds=i)) for i in range(n)]
    )
    return queue, ids


async def test_a_backlog_of_batches_is_promoted_whole_and_in_due_order(
    autojump_clock: Any, harness: Harness
) -> None:
    n = 2 * BATCH + 500
    queue, ids = await _backlog(harness, n)
    pushes: list[list[str]] = []
    push = harness.broker.push

    async def recording_push(name: str, entries: Sequence[Ready]) -> None:
        pushes.append([e.id for e in entries])
        await push(name, entries)

    harness.broker.push = recording_push  # type: ignore[method-assign]
    await trio.sleep(2)  # past the due times (the clock autojumps)
    scheduler = Scheduler(queue._context(), 1.0)
    assert await scheduler.run_once() == n
    assert [len(p) for p in pushes] == [BATCH, BATCH, 500]
    assert [i for p in pushes for i in p] == ids  # due order, batch after batch
    assert await harness.broker.size(queue.config.queue_name) == n
    popped = await harness.broker.pop(queue.config.queue_name, n)
    assert list(popped) == ids  # and Redis hands them out in that order
    await queue.close()


async def test_a_push_failing_mid_backlog_is_an_outage_and_the_rest_waits(
    autojump_clock: Any, harness: Harness
) -> None:
    n = 2 * BATCH + 500
    queue, _ = await _backlog(harness, n)
    push = harness.broker.push
    calls = 0

    async def flaky_push(name: str, entries: Sequence[Ready]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KyuConnectionError("Redis went away")
        await push(name, entries)

    harness.broker.push = flaky_push  # type: ignore[method-assign]
    await trio.sleep(2)  # past the due times (the clock autojumps)
    scheduler = Scheduler(queue._context(), 1.0)
    with pytest.raises(KyuConnectionError, match="went away"):
        await scheduler.run_once()
    # The first batch reached Redis. The second's push failed while the third was
    # promoted: both are pending in the store, which is the record, and the sweep's
    # resync pushes them; nothing is promoted twice.
    assert await harness.broker.size(queue.config.queue_name) == BATCH
    assert await scheduler.run_once() == 0
    assert await scheduler.resync() == n
    assert await harness.broker.size(queue.config.queue_name) == n
    await queue.close()
