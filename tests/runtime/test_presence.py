"""Which processes serve a queue, in virtual time: each serving process records itself
when it starts and every leader interval (leader or not), deletes its row when it stops,
and drops out of `Queue.processes` three intervals after its last record when it cannot
write (a process that died looks the same); the leader's pruner deletes such rows an
hour after they expired."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import trio

from kyu_trio import Config, KyuConnectionError, MemoryStore, ProcessInfo, Queue
from kyu_trio._runtime._pruner import Pruner

from .conftest import Harness

INTERVAL = 2.0


class Process:
    """One process's view of the shared store: counts its writes of its own row, and can
    lose PostgreSQL's answers to them."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.records: Counter[str] = Counter()
        self.partitioned = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name != "record_process":
            return method

        async def record(*args: Any, **kwargs: Any) -> Any:
            if self.partitioned:
                await trio.sleep(0.1)
                raise KyuConnectionError("PostgreSQL at test: unreachable")
            self.records["record_process"] += 1
            return await method(*args, **kwargs)

        return record


def make(harness: Harness, process: Process, workers: int = 2) -> Queue:
    config = Config(
        workers=workers,
        metrics_port=0,
        scheduler_interval=1.0,
        reaper_interval=5.0,
        metrics_sample_interval=3.0,
        leader_interval=INTERVAL,
    )
    return Queue(config, store=process, broker=harness.broker, clock=harness.clock)  # type: ignore[arg-type]


async def test_serving_processes_list_themselves_and_the_leader(
    autojump_clock: Any, harness: Harness
) -> None:
    processes = [Process(harness.store), Process(harness.store)]
    first, second = make(harness, processes[0]), make(harness, processes[1], workers=7)
    async with trio.open_nursery() as nursery:
        start = harness.clock.now()
        await first.connect()
        await nursery.start(first.serve)
        await trio.sleep(0.5)
        await second.connect()
        await nursery.start(second.serve)
        # Recorded before serve() reports it started.
        listed = await first.processes()
        assert [(p.process_id, p.workers, p.leader) for p in listed] == [
            (first.worker_id, 2, True),
            (second.worker_id, 7, False),
        ]
        assert [p.started_at for p in listed] == [start, start + timedelta(seconds=0.5)]
        assert all(p.host and p.pid for p in listed)
        assert await second.processes() == listed

        # Refreshed every interval, by the leader (which wakes three times as often) and
        # by the others alike: last_seen moves, started_at stays.
        await trio.sleep(10 * INTERVAL - 0.25)
        # At 0, 2, ..., 20 s, and at 0.5, 2.5, ..., 18.5 s (it is 20.25 s now).
        assert [p.records["record_process"] for p in processes] == [11, 10]
        refreshed = await first.processes()
        assert [p.started_at for p in refreshed] == [p.started_at for p in listed]
        now = harness.clock.now()
        assert all(now - p.last_seen <= timedelta(seconds=INTERVAL) for p in refreshed)

        # A clean stop deletes the row at once; the role passes to the other process.
        first.shutdown()
        await trio.sleep(0.1)
        [left] = await second.processes()
        assert (left.process_id, left.leader) == (second.worker_id, False)
        await trio.sleep(INTERVAL + 0.1)
        [left] = await second.processes()
        assert left.leader
        second.shutdown()
    assert await harness.store.processes("kyu:default", harness.clock.now()) == []


async def test_a_process_that_cannot_record_itself_drops_out_and_comes_back(
    autojump_clock: Any, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    process = Process(harness.store)
    queue = make(harness, process)
    async with trio.open_nursery() as nursery:
        await queue.connect()
        await nursery.start(queue.serve)
        with caplog.at_level(logging.WARNING, logger="kyu_trio"):
            process.partitioned = True
            await trio.sleep(3 * INTERVAL - 0.5)
            assert len(await queue.processes()) == 1  # two refreshes lost: still listed
            await trio.sleep(1.0)
            assert await queue.processes() == []  # three: gone, as a dead process is
            process.partitioned = False
            await trio.sleep(INTERVAL)
            [back] = await queue.processes()
            assert back.process_id == queue.worker_id
        outage = [r for r in caplog.records if "process registry" in r.getMessage()]
        assert [r.levelname for r in outage] == ["ERROR", "WARNING"]  # once each way
        queue.shutdown()


async def test_the_pruner_deletes_rows_an_hour_after_they_expired(
    autojump_clock: Any, harness: Harness
) -> None:
    store = harness.store
    now = harness.clock.now()
    # A process that died: its row was recorded, then never refreshed nor deleted.
    dead = ProcessInfo("host:1:dead", "host", 1, 4, now, now)
    await store.record_process("kyu:default", dead, 3 * INTERVAL)
    async with make(harness, Process(store)) as queue:
        pruner = Pruner(queue._context(), queue.config)
        fence = await store.lead("kyu:default", "leader", now, 5.0)
        await trio.sleep(3 * INTERVAL + 3599)  # expired, but not an hour ago yet
        await pruner.run_once(fence)
        assert len(store._processes) == 1
        await trio.sleep(2)
        await pruner.run_once(fence)
        assert store._processes == {}
