"""How many jobs a claim takes: with a backlog, free workers wait a moment for others so
that one claim serves them all; an idle queue's job is claimed at once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest
import trio

from kyu_trio import Job, JobStatus
from kyu_trio._runtime._pool import CLAIM_LINGER

from .conftest import Harness


def record_claims(harness: Harness) -> list[int]:
    sizes: list[int] = []
    real = harness.store.claim_jobs

    async def claim_jobs(queue: str, ids: Sequence[str], worker: str, now: datetime) -> list[Job]:
        sizes.append(len(ids))
        return await real(queue, ids, worker, now)

    harness.store.claim_jobs = claim_jobs  # type: ignore[method-assign]
    return sizes


async def test_with_a_backlog_one_claim_serves_half_of_the_workers(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(workers=10)
    sizes = record_claims(harness)
    done = trio.Event()
    finished = 0

    @queue.handler("staggered")
    async def staggered(payload: str) -> None:
        # Workers finish one by one, a millisecond apart: without waiting for each other
        # every claim would take a single job.
        nonlocal finished
        await trio.sleep(1.0 + int(payload) * 0.001)
        finished += 1
        if finished == 100:
            done.set()

    async with queue:
        await queue.enqueue_many([("staggered", str(i % 10)) for i in range(100)])
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await done.wait()
            queue.shutdown()
    assert sum(sizes) == 100
    # The first claims take the 10 free workers' jobs; every later one waits for half of
    # the workers (5) to be free: 1 ms apart here, within CLAIM_LINGER.
    assert sizes[0] == 10
    assert min(sizes[1:]) == 5, sizes


async def test_a_free_worker_waits_at_most_claim_linger_for_others(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(workers=10)
    sizes = record_claims(harness)
    started: dict[str, float] = {}

    @queue.handler("job")
    async def job(payload: str) -> None:
        started[payload] = trio.current_time()
        await trio.sleep(1.0 if payload == "short" else 100.0)

    async with queue:
        await queue.enqueue("job", "short")
        await queue.enqueue_many([("job", "long") for _ in range(9)])
        await queue.enqueue("job", "next")
        await queue.enqueue_many([("job", "later") for _ in range(5)])
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(2.0)
            queue.shutdown()
            nursery.cancel_scope.cancel()
    # The short job freed its worker at 1 s; the other nine stay busy, so the claim for
    # that one worker goes out once CLAIM_LINGER has passed.
    assert sizes[:2] == [10, 1]
    assert started["next"] - started["short"] == pytest.approx(1.0 + CLAIM_LINGER)


async def test_an_idle_queue_claims_a_new_job_at_once(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(workers=10)
    started: list[float] = []

    @queue.handler("one")
    async def one(payload: str) -> None:
        started.append(trio.current_time())

    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        for _ in range(3):
            await trio.sleep(2.0)
            enqueued = trio.current_time()
            await queue.enqueue("one", "")
            await trio.sleep(1.0)
            assert started[-1] - enqueued < CLAIM_LINGER / 10
        queue.shutdown()
    assert len(started) == 3


async def test_shutdown_while_a_fetcher_waits_for_workers_leaves_nothing_running(
    autojump_clock: Any, harness: Harness
) -> None:
    # The fetcher waits (CLAIM_LINGER) for half of the workers when shutdown comes: the
    # slots it holds go back and serve() returns with every job completed or pending.
    queue = harness.queue(workers=10, shutdown_grace=5.0)
    sizes = record_claims(harness)

    @queue.handler("job")
    async def job(payload: str) -> None:
        await trio.sleep(float(payload))

    async with queue:
        ids = await queue.enqueue_many([("job", "1") for _ in range(1)])
        ids += await queue.enqueue_many([("job", "100") for _ in range(9)])
        ids += await queue.enqueue_many([("job", "0.1") for _ in range(20)])
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.serve)
                # At 1 s the short job ends; its worker waits for others (who run 100 s).
                await trio.sleep(1.0 + CLAIM_LINGER / 2)
                queue.shutdown()
        statuses = {(await queue.inspect(i)).status for i in ids}
    assert sizes == [10]  # the freed worker's claim never went out
    assert statuses <= {JobStatus.COMPLETED, JobStatus.PENDING}
