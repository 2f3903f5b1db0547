"""One maintenance leader per queue, in virtual time (issue 13, point 7): of several
serving processes only the leader runs the maintenance queries; a leader that loses
PostgreSQL stops leading when its lease may have run out, and another takes over within
two leader intervals; a leader that stops hands the role over at once."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import trio

from kyu_trio import Config, KyuConnectionError, MemoryStore, Queue

from .conftest import Harness

INTERVAL = 2.0
#: The store calls that only maintenance makes (promotion, rescue, the Redis sweep, the
#: queue-wide sample).
MAINTENANCE = {"promote_due", "stale_jobs", "pending_after", "queue_stats"}


class Process:
    """One worker process's view of the shared store: counts its maintenance calls, and
    can lose PostgreSQL's answers to its lease requests (a partition)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()
        self.partitioned = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name in ("lead", "resign"):

            async def guarded(*args: Any, **kwargs: Any) -> Any:
                if self.partitioned:
                    await trio.sleep(0.1)
                    raise KyuConnectionError("PostgreSQL at test: unreachable")
                return await method(*args, **kwargs)

            return guarded
        if name in MAINTENANCE:

            async def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] += 1
                return await method(*args, **kwargs)

            return counted
        return method


def make(harness: Harness, process: Process) -> Queue:
    config = Config(
        workers=2,
        metrics_port=0,
        scheduler_interval=1.0,
        reaper_interval=5.0,
        metrics_sample_interval=3.0,
        leader_interval=INTERVAL,
    )
    queue = Queue(config, store=process, broker=harness.broker, clock=harness.clock)  # type: ignore[arg-type]
    queue.register("t", lambda payload: None)
    return queue


def leads(queue: Queue) -> bool:
    value = queue.metrics.registry.get_sample_value("kyu_leader", {"queue": "kyu:default"})
    return value == 1


async def test_only_the_leader_runs_maintenance(autojump_clock: Any, harness: Harness) -> None:
    processes = [Process(harness.store) for _ in range(4)]
    queues = [make(harness, p) for p in processes]
    async with trio.open_nursery() as nursery:
        for queue in queues:
            await queue.connect()
            await nursery.start(queue.serve)
        assert [leads(q) for q in queues] == [True, False, False, False]
        for p in processes:
            p.calls.clear()
        await trio.sleep(60)
        leader, *others = processes
        # The scheduler every second, the reaper every 5 s, the sample every 3 s: on the
        # leader alone, as with a single process.
        assert leader.calls["promote_due"] >= 55
        assert leader.calls["stale_jobs"] >= 11
        assert leader.calls["queue_stats"] >= 19
        assert all(sum(p.calls.values()) == 0 for p in others)
        for queue in queues:
            queue.shutdown()
    for queue in queues:
        await queue.aclose()


async def test_a_partitioned_leader_hands_over_within_two_intervals(
    autojump_clock: Any, harness: Harness, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="kyu_trio")
    a, b = Process(harness.store), Process(harness.store)
    qa, qb = make(harness, a), make(harness, b)
    async with trio.open_nursery() as nursery:
        for queue in (qa, qb):
            await queue.connect()
            await nursery.start(queue.serve)
        await trio.sleep(10)
        assert leads(qa) and not leads(qb)
        a.partitioned = True
        cut = trio.current_time()
        a_stopped = b_started = None
        while b_started is None:
            await trio.sleep(0.05)
            now = trio.current_time()
            if a_stopped is None and not leads(qa):
                a_stopped = now
            if leads(qb):
                b_started = now
        assert a_stopped is not None
        # The old leader stops before the new one starts: never two at once.
        assert a_stopped <= b_started
        assert b_started - cut <= 2 * INTERVAL
        # The old leader's maintenance stopped with its lease.
        a.calls.clear()
        await trio.sleep(20)
        assert sum(a.calls.values()) == 0
        assert b.calls["promote_due"] >= 19
        # Back on the network, it does not take the role back while b holds it.
        a.partitioned = False
        await trio.sleep(20)
        assert leads(qb) and not leads(qa)
        qa.shutdown()
        qb.shutdown()
    for queue in (qa, qb):
        await queue.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert any("now leads the maintenance of queue 'kyu:default' (term 2)" in m for m in messages)
    assert any("no longer leads" in m and "ran out" in m for m in messages)


async def test_a_stopping_leader_hands_over_at_once(autojump_clock: Any, harness: Harness) -> None:
    qa, qb = make(harness, Process(harness.store)), make(harness, Process(harness.store))
    async with trio.open_nursery() as nursery:
        for queue in (qa, qb):
            await queue.connect()
            await nursery.start(queue.serve)
        assert leads(qa)
        qa.shutdown()
        stopped = trio.current_time()
        while not leads(qb):  # noqa: ASYNC110 (the gauge is read as a scrape would)
            await trio.sleep(0.05)
        # b asks once per interval; the lease handed back need not expire first.
        assert trio.current_time() - stopped <= INTERVAL + 0.1
        qb.shutdown()
    for queue in (qa, qb):
        await queue.aclose()
