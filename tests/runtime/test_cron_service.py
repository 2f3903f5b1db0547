"""The cron service on the in-memory adapters under MockClock (issue 13, point 2 in
virtual time): one job per tick across leader changes, deposed leaders, restarts and
lost answers; missed ticks run once (or are skipped); registering never fires at once."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from kyu_trio import KyuConnectionError, MemoryBroker, MemoryStore, TrioClock, current_job
from kyu_trio._cron import CronEntry, new_cron_entry, ticks_between
from kyu_trio._ports import Fence
from kyu_trio._runtime._cron import CronService
from kyu_trio._runtime._leader import Leadership
from kyu_trio._runtime._metrics import Metrics
from kyu_trio._runtime._service import Context

from .conftest import Harness

QUEUE = "kyu:cron"
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
FOREVER = 10 * 365 * 86400.0


class Process:
    """One serving process's view of the shared store; `kill` makes it stop answering
    (as a SIGKILLed process: no resignation, nothing written after)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.killed = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.killed:
                await trio.sleep_forever()
            return await method(*args, **kwargs)

        return call


class Setup:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.broker = MemoryBroker()
        self.clock = TrioClock(EPOCH)

    def context(self, store: Any = None) -> Context:
        return Context(
            queue=QUEUE,
            store=self.store if store is None else store,
            broker=self.broker,
            clock=self.clock,
            log=logging.getLogger("kyu_trio"),
            metrics=Metrics(QUEUE, "test", lambda _: True),
        )

    def service(self, entries: Sequence[CronEntry], store: Any = None, **kw: Any) -> CronService:
        return CronService(self.context(store), entries, **kw)

    async def fence(self, holder: str = "leader", ttl: float = FOREVER) -> Fence:
        fence = await self.store.lead(QUEUE, holder, self.clock.now(), ttl)
        assert fence is not None
        return fence

    def jobs(self, job_type: str | None = None) -> Counter[datetime]:
        return Counter(
            j.scheduled_at
            for j in self.store.jobs.values()
            if job_type is None or j.job_type == job_type
        )

    def at(self, seconds: float) -> datetime:
        return EPOCH + timedelta(seconds=seconds)


async def test_one_job_per_tick_across_a_leader_killed_mid_run(autojump_clock: Any) -> None:
    """Three processes campaign for the lease (leader_interval 1 s: the role passes
    within 2 s); the leader is killed twice. A 3 s schedule: no tick missed, none
    doubled."""
    s = Setup()
    entry = new_cron_entry("*/3 * * * * *", "tick")
    processes = [Process(s.store) for _ in range(3)]
    leaderships = []
    async with trio.open_nursery() as nursery:
        for i, process in enumerate(processes):
            cron = s.service([entry], store=process)
            leadership = Leadership(s.context(process), f"p{i}", 1.0, [cron.run])
            leaderships.append(leadership)
            await nursery.start(leadership.run)
        for _ in range(2):
            await trio.sleep(10.5)
            leader = next(i for i, lead in enumerate(leaderships) if lead.leading)
            processes[leader].killed = True
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    ticks = list(ticks_between(entry, EPOCH, s.at(31)))
    assert len(ticks) == 10
    assert s.jobs() == Counter(ticks)
    # The jobs are in the broker too (each pushed once, by the leader that fired it).
    assert await s.broker.size(QUEUE) == 10
    assert sum(lead.elections for lead in leaderships) == 3


async def test_a_deposed_leader_fires_nothing(autojump_clock: Any) -> None:
    """Leader a's lease runs out while it still believes it leads; b takes over. Both
    run side by side: each tick is written once, by b."""
    s = Setup()
    entry = new_cron_entry("*/5 * * * * *", "tick")
    a = s.service([entry])
    old = await s.fence("a", ttl=12)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run, old)
        await trio.sleep(12)
        new = await s.fence("b")
        assert new.term == old.term + 1
        nursery.start_soon(s.service([entry]).run, new)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    ticks = list(ticks_between(entry, EPOCH, s.at(42)))
    assert s.jobs() == Counter(ticks)
    assert await a.run_once(old) == 0


async def test_a_restarted_leader_does_not_repeat_a_tick(autojump_clock: Any) -> None:
    s = Setup()
    entry = new_cron_entry("* * * * *", "tick")
    first = s.service([entry])
    fence = await s.fence()
    assert await first.run_once(fence) == 0  # records the entry
    await trio.sleep(60)
    assert await first.run_once(fence) == 1
    # A new process (another service, a new term), in the same second: nothing to do.
    again = await s.store.lead(QUEUE, "restarted", s.clock.now(), FOREVER)
    assert again is None  # the lease is still the first one's
    await s.store.resign(QUEUE, fence)
    again = await s.fence("restarted")
    assert await s.service([entry]).run_once(again) == 0
    await trio.sleep(60)
    assert await s.service([entry]).run_once(again) == 1
    assert s.jobs() == Counter([s.at(60), s.at(120)])


async def test_registering_never_fires_at_once_and_new_entries_are_picked_up(
    autojump_clock: Any,
) -> None:
    s = Setup()
    entries = [new_cron_entry("*/10 * * * * *", "fast")]
    await trio.sleep(25)  # 00:00:25: the last tick (00:00:20) fell before registration
    cron = s.service(entries, max_wait=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cron.run, await s.fence())
        await trio.sleep(1)
        assert s.jobs() == Counter()
        # Registered while serving: recorded within max_wait, at its latest tick then.
        entries.append(new_cron_entry("* * * * *", "slow"))
        await trio.sleep(65)
        nursery.cancel_scope.cancel()
    assert s.jobs("fast") == Counter(s.at(t) for t in range(30, 91, 10))
    assert s.jobs("slow") == Counter([s.at(60)])
    assert [st.name for st in await s.store.cron_states(QUEUE)] == ["fast", "slow"]


async def test_missed_ticks_run_once_when_serving_resumes(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    s = Setup()
    runs = new_cron_entry("*/10 * * * *", "report")
    skips = new_cron_entry("*/10 * * * *", "refresh", missed="skip")
    fence = await s.fence()
    with trio.move_on_after(3601):
        await s.service([runs, skips]).run(fence)
    assert len(s.jobs("report")) == len(s.jobs("refresh")) == 6
    # Nobody serves the queue from 01:00:01 to 06:35.
    await trio.sleep(6 * 3600 + 35 * 60 - 3601)
    caplog.set_level(logging.INFO, "kyu_trio")
    back = s.service([runs, skips])
    assert await back.run_once(fence) == 1
    resumed = s.clock.now()
    missed = s.at(6.5 * 3600)  # 06:30, the latest tick: 32 earlier ones fell unserved
    assert s.jobs("report")[missed] == 1 and len(s.jobs("report")) == 7
    [job] = [j for j in s.store.jobs.values() if j.scheduled_at == missed]
    assert job.created_at == resumed
    assert len(s.jobs("refresh")) == 6  # skipped: found 5 minutes late
    states = {st.name: st.last_tick for st in await s.store.cron_states(QUEUE)}
    assert states == {"report": missed, "refresh": missed}
    messages = [r.getMessage() for r in caplog.records]
    assert any("'refresh'" in m and "skipped tick 2030-01-01T06:30:00+00:00" in m for m in messages)
    assert any(
        "'report'" in m and "earlier ticks since 2030-01-01T01:00:00+00:00" in m for m in messages
    )
    # Then both run again at their next tick (06:40), found on time.
    await trio.sleep(5 * 60)
    assert await back.run_once(fence) == 2


async def test_a_fire_whose_answer_is_lost_is_not_repeated(autojump_clock: Any) -> None:
    """PostgreSQL commits the tick, then the connection drops: the service reads the
    row again and finds the tick fired."""
    s = Setup()
    entry = new_cron_entry("*/10 * * * * *", "tick")
    lost = []

    class Lossy(Process):
        def __getattr__(self, name: str) -> Any:
            method = getattr(self._store, name)
            if name != "fire_cron":
                return method

            async def fire(*args: Any, **kwargs: Any) -> Any:
                result = await method(*args, **kwargs)
                if not lost:
                    lost.append(result)
                    raise KyuConnectionError("PostgreSQL at test: went away")
                return result

            return fire

    fence = await s.fence()
    with trio.move_on_after(35):
        await s.service([entry], store=Lossy(s.store)).run(fence)
    assert lost and lost[0]  # the first fire was written
    assert s.jobs() == Counter([s.at(10), s.at(20), s.at(30)])
    # Its job was never pushed (the sweep of the leader's reaper does that).
    assert await s.broker.size(QUEUE) == 2


async def test_seconds_until_next(autojump_clock: Any) -> None:
    s = Setup()
    assert s.service([]).seconds_until_next(s.clock.now()) == math.inf
    cron = s.service([new_cron_entry("* * * * *", "a"), new_cron_entry("*/15 * * * * *", "b")])
    assert cron.seconds_until_next(s.at(0)) == 15.0
    assert cron.seconds_until_next(s.at(50)) == 10.0
    fence = await s.fence()
    await cron.run_once(fence)
    await trio.sleep(100)  # nothing ran meanwhile: a tick is due
    assert cron.seconds_until_next(s.clock.now()) == 0.0
    assert await cron.run_once(fence) == 2
    assert cron.seconds_until_next(s.clock.now()) == 5.0
    # A next leader without entries records that none is registered any more.
    await s.store.resign(QUEUE, fence)
    assert await s.service([]).run_once(await s.fence("next")) == 0
    assert [st.registered for st in await s.store.cron_states(QUEUE)] == [False, False]


async def test_queues_serving_together_run_each_tick_once(
    autojump_clock: Any, harness: Harness
) -> None:
    """Four `Queue.serve()` on one store, each registering the same entries: each tick's
    job is enqueued once and run once; registering fires nothing at once."""
    ran: Counter[tuple[str, datetime]] = Counter()
    queues = []
    for _ in range(4):
        queue = harness.queue(leader_interval=1.0)

        @queue.periodic("*/10 * * * * *", "fast")
        async def fast(payload: None) -> None:
            ran["fast", current_job().scheduled_at] += 1

        @queue.handler("slow")
        async def slow(payload: dict[str, int]) -> None:
            ran["slow", current_job().scheduled_at] += payload["n"]

        queue.cron("* * * * *", "slow", {"n": 1}, name="every-minute")
        queues.append(queue)
    start = harness.clock.now()
    async with trio.open_nursery() as nursery:
        for queue in queues:
            await nursery.start(queue.serve)
        await trio.sleep(125)
        for queue in queues:
            queue.shutdown()
    fast_ticks = [t for t in ticks_between(new_cron_entry("*/10 * * * * *", "f"), start,
                                          start + timedelta(seconds=120))]  # fmt: skip
    assert Counter(t for kind, t in ran.elements() if kind == "fast") == Counter(fast_ticks)
    assert [t for kind, t in ran if kind == "slow"] == [
        start + timedelta(seconds=60),
        start + timedelta(seconds=120),
    ]
    assert all(n == 1 for n in ran.values())
