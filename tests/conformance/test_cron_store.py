"""The cron table, against MemoryStore and PostgresStore: entries are recorded by the
leader only, a new one starts at its latest tick before now, and firing a tick is one
fenced, conditional write: the tick's job is written once, however often (and by however
many leaders) it is tried."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from kyu_trio import JobStatus
from kyu_trio._cron import CronEntry, cron_job, new_cron_entry
from kyu_trio._ports import Fence

T0 = datetime(2030, 1, 1, 9, 30, tzinfo=UTC)
TTL = 60.0


def hourly(name: str = "report", **fields: Any) -> CronEntry:
    return new_cron_entry("0 * * * *", "report", {"n": 1}, name=name, **fields)


def job_for(entry: CronEntry, queue: str, tick: datetime) -> Any:
    return cron_job(entry, queue, tick, str(uuid.uuid4()), 30.0)


async def test_sync_records_new_entries_at_their_latest_tick(store: Any, queue_name: str) -> None:
    fence = await store.lead(queue_name, "leader", T0, TTL)
    entry = hourly(timezone="Asia/Kolkata", priority=5, job_timeout=12.5)
    assert await store.sync_cron(queue_name, [entry], T0, fence) is True
    [state] = await store.cron_states(queue_name)
    # 09:30 UTC is 15:00 in Kolkata: the latest tick at or before now is now itself.
    assert state.last_tick == T0 and state.registered
    assert (state.queue, state.name, state.schedule, state.timezone) == (
        queue_name,
        "report",
        "0 * * * *",
        "Asia/Kolkata",
    )
    assert (state.job_type, state.payload, state.priority, state.max_retries) == (
        "report",
        '{"n":1}',
        5,
        3,
    )
    assert (state.job_timeout, state.missed, state.updated_at) == (12.5, "run_once", T0)
    assert state.entry() == entry
    # In UTC the latest hourly tick before 09:30 is 09:00.
    other = hourly("utc")
    await store.sync_cron(queue_name, [entry, other], T0, fence)
    states = {s.name: s for s in await store.cron_states(queue_name)}
    assert states["utc"].last_tick == T0.replace(minute=0)
    assert await store.cron_states(queue_name + "-other") == []


async def test_only_the_lease_holder_records_entries(store: Any, queue_name: str) -> None:
    fence = await store.lead(queue_name, "leader", T0, TTL)
    stale = Fence("leader", fence.term + 1)
    assert await store.sync_cron(queue_name, [hourly()], T0, stale) is False
    assert await store.sync_cron(queue_name, [hourly()], T0, Fence("other", fence.term)) is False
    assert await store.cron_states(queue_name) == []
    # A lease of another queue fences nothing here.
    other = await store.lead(queue_name + "-b", "x", T0, TTL)
    assert await store.sync_cron(queue_name, [hourly()], T0, other) is False


async def test_a_changed_entry_keeps_its_last_tick_and_dropped_ones_stay_unregistered(
    store: Any, queue_name: str
) -> None:
    fence = await store.lead(queue_name, "leader", T0, TTL)
    await store.sync_cron(queue_name, [hourly("a"), hourly("b")], T0, fence)
    later = T0 + timedelta(hours=5)
    changed = new_cron_entry("*/5 * * * *", "other", None, name="a", missed="skip")
    assert await store.sync_cron(queue_name, [changed], later, fence) is True
    a, b = await store.cron_states(queue_name)
    assert (a.name, a.schedule, a.job_type, a.payload, a.missed) == (
        "a",
        "*/5 * * * *",
        "other",
        "null",
        "skip",
    )
    assert a.last_tick == T0.replace(minute=0) and a.registered and a.updated_at == later
    assert (b.name, b.registered, b.last_tick, b.updated_at) == ("b", False, a.last_tick, later)
    # Registered again by a later leader: back, with the tick it had.
    await store.sync_cron(queue_name, [changed, hourly("b")], later, fence)
    states = await store.cron_states(queue_name)
    assert [(s.name, s.registered, s.last_tick) for s in states] == [
        ("a", True, T0.replace(minute=0)),
        ("b", True, T0.replace(minute=0)),
    ]
    # Syncing unchanged entries writes nothing.
    await store.sync_cron(queue_name, [changed, hourly("b")], later + timedelta(hours=1), fence)
    assert [s.updated_at for s in await store.cron_states(queue_name)] == [later, later]


async def test_a_tick_is_fired_once(store: Any, queue_name: str) -> None:
    fence = await store.lead(queue_name, "leader", T0, TTL)
    entry = hourly()
    await store.sync_cron(queue_name, [entry], T0, fence)
    last = T0.replace(minute=0)
    tick = last + timedelta(hours=1)
    now = tick + timedelta(seconds=2)
    job = job_for(entry, queue_name, tick)
    ready = await store.fire_cron(queue_name, "report", last, tick, job, fence, now)
    assert ready is not None and [r.id for r in ready] == [job.id]
    stored = await store.get_job(job.id)
    assert (stored.status, stored.scheduled_at, stored.payload, stored.job_type) == (
        JobStatus.PENDING,
        tick,
        {"n": 1},
        "report",
    )
    assert (stored.queue, stored.created_at, stored.job_timeout) == (queue_name, now, 30.0)
    [state] = await store.cron_states(queue_name)
    assert (state.last_tick, state.updated_at) == (tick, now)
    # The same tick again (a retried statement, a second leader that read the same row),
    # with a job of another id: nothing is written.
    again = job_for(entry, queue_name, tick)
    assert await store.fire_cron(queue_name, "report", last, tick, again, fence, now) is None
    assert await store.get_job(again.id) is None
    assert await store.pending_after(queue_name, 0, 10) == ready
    # An unknown entry fires nothing.
    other = job_for(entry, queue_name, tick)
    assert await store.fire_cron(queue_name, "nope", last, tick, other, fence, now) is None


async def test_a_deposed_leader_fires_nothing(store: Any, queue_name: str) -> None:
    old = await store.lead(queue_name, "a", T0, TTL)
    entry = hourly()
    await store.sync_cron(queue_name, [entry], T0, old)
    last, tick = T0.replace(minute=0), T0.replace(minute=0) + timedelta(hours=1)
    # a's lease runs out; b takes the queue over.
    now = T0 + timedelta(seconds=TTL + 1)
    new = await store.lead(queue_name, "b", now, TTL)
    assert new == Fence("b", old.term + 1)
    job = job_for(entry, queue_name, tick)
    assert await store.fire_cron(queue_name, "report", last, tick, job, old, now) is None
    assert await store.get_job(job.id) is None
    assert await store.sync_cron(queue_name, [], now, old) is False
    job = job_for(entry, queue_name, tick)
    assert await store.fire_cron(queue_name, "report", last, tick, job, new, now) is not None


async def test_a_skipped_tick_advances_without_a_job(store: Any, queue_name: str) -> None:
    fence = await store.lead(queue_name, "leader", T0, TTL)
    await store.sync_cron(queue_name, [hourly(missed="skip")], T0, fence)
    last, tick = T0.replace(minute=0), T0.replace(minute=0) + timedelta(hours=3)
    now = tick + timedelta(minutes=30)
    assert await store.fire_cron(queue_name, "report", last, tick, None, fence, now) == []
    [state] = await store.cron_states(queue_name)
    assert state.last_tick == tick
    assert await store.list_jobs(queue_name, None, None, 10) == []
    assert await store.fire_cron(queue_name, "report", last, tick, None, fence, now) is None


async def test_concurrent_fires_of_one_tick_write_one_job(store: Any, queue_name: str) -> None:
    fence = await store.lead(queue_name, "leader", T0, TTL)
    entry = hourly()
    await store.sync_cron(queue_name, [entry], T0, fence)
    last, tick = T0.replace(minute=0), T0.replace(minute=0) + timedelta(hours=1)
    results: list[Any] = []

    async def fire() -> None:
        job = job_for(entry, queue_name, tick)
        results.append(await store.fire_cron(queue_name, "report", last, tick, job, fence, tick))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(fire)
    assert sum(r is not None for r in results) == 1
    jobs = await store.list_jobs(queue_name, None, None, 100)
    assert [j.scheduled_at for j in jobs] == [tick]


async def test_states_read_back_as_entries(store: Any, queue_name: str) -> None:
    fence = await store.lead(queue_name, "leader", T0, TTL)
    entries = [
        new_cron_entry("*/10 * * * * *", "t", [1, "two"], name="seconds", max_retries=0),
        new_cron_entry("@daily", "t", None, name="daily", timezone="Europe/Paris"),
    ]
    await store.sync_cron(queue_name, entries, T0, fence)
    states = await store.cron_states(queue_name)
    assert [s.entry() for s in states] == sorted(entries, key=lambda e: e.name)
    # A row this kyu-trio cannot read (another version's schedule) has no entry.
    assert attrs.evolve(states[0], schedule="@fortnightly").entry() is None
    assert attrs.evolve(states[0], timezone="Mars/Olympus").next_run(T0) is None
