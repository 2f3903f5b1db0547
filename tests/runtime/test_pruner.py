"""The pruner on the in-memory adapters under MockClock: what it deletes and when (each
status after its own retention, None never), in bounded batches and passes, counted in
``kyu_jobs_pruned_total`` and logged once per pass; and the retention settings' bounds."""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from prometheus_client import generate_latest

from kyu_trio import Config, ConfigError, JobStatus, KyuConnectionError, TrioClock
from kyu_trio._broker._memory import MemoryBroker
from kyu_trio._config import MAX_RETENTION
from kyu_trio._ports import Failure, Fence, Lease, NewJob
from kyu_trio._runtime import _pruner
from kyu_trio._runtime._metrics import Metrics
from kyu_trio._runtime._pruner import Pruner
from kyu_trio._runtime._service import Context
from kyu_trio._store._memory import MemoryStore
from kyu_trio.testing import drain, memory_queue

QUEUE = "kyu:prune"
DAY = 86400.0
FENCE = Fence("leader", 1)


class Setup:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.clock = TrioClock()
        self.metrics = Metrics(QUEUE, "test", lambda _: True)
        self.context = Context(
            queue=QUEUE,
            store=self.store,
            broker=MemoryBroker(),
            clock=self.clock,
            log=logging.getLogger("kyu_trio"),
            metrics=self.metrics,
        )

    def pruner(self, **retention: Any) -> Pruner:
        return Pruner(self.context, Config(**retention))

    async def finish(self, status: JobStatus, count: int = 1, queue: str = QUEUE) -> list[str]:
        """``count`` jobs of ``queue`` that reach ``status`` now, each after a failed run."""
        now = self.clock.now()
        jobs = [
            NewJob(
                id=str(uuid.uuid4()),
                queue=queue,
                job_type="t",
                payload="null",
                priority=0,
                max_retries=3,
                scheduled_at=now,
                job_timeout=10.0,
                status=JobStatus.PENDING,
            )
            for _ in range(count)
        ]
        ids = [j.id for j in jobs]
        await self.store.insert_jobs(jobs, now)
        if status is JobStatus.CANCELLED:
            for job_id in ids:
                await self.store.cancel_job(job_id, now)
            return ids
        claimed = await self.store.claim_jobs(queue, ids, "w", now)
        leases = [Lease(j.id, j.attempt) for j in claimed]
        if status is JobStatus.COMPLETED:
            assert len(await self.store.complete_jobs(leases, "w", now)) == count
        else:
            dead = [Failure(lease, JobStatus.DEAD, "E: boom") for lease in leases]
            assert len(await self.store.fail_jobs(dead, "w", now)) == count
        return ids

    def left(self, status: JobStatus | None = None) -> int:
        return sum(1 for j in self.store.jobs.values() if status is None or j.status is status)


async def test_each_status_is_deleted_once_past_its_own_retention(autojump_clock: Any) -> None:
    s = Setup()
    pruner = s.pruner()  # the defaults: 7, 7 and 30 days
    completed = await s.finish(JobStatus.COMPLETED, 3)
    await s.finish(JobStatus.CANCELLED, 2)
    await s.finish(JobStatus.DEAD, 4)
    await trio.sleep(DAY)
    young = await s.finish(JobStatus.COMPLETED, 1)  # a day younger than the others

    await trio.sleep(6 * DAY)  # the first ones are exactly 7 days old: not older yet
    assert await pruner.run_once(FENCE) == 0
    await trio.sleep(0.001)
    assert await pruner.run_once(FENCE) == 5
    assert set(s.store.jobs) == set(young) | {
        j for j, job in s.store.jobs.items() if job.status is JobStatus.DEAD
    }
    assert all(c not in s.store.jobs for c in completed)
    assert s.metrics.pruned == {"completed": 3, "cancelled": 2, "dead": 0}

    await trio.sleep(DAY)
    assert await pruner.run_once(FENCE) == 1  # the young one, a day later
    await trio.sleep(22 * DAY - 0.002)
    assert await pruner.run_once(FENCE) == 0  # dead jobs: 30 days
    await trio.sleep(0.002)
    assert await pruner.run_once(FENCE) == 4
    assert s.left() == 0
    assert s.metrics.pruned == {"completed": 4, "cancelled": 2, "dead": 4}
    assert s.store._history == {}  # their attempt history went with them


async def test_none_keeps_a_status_forever(autojump_clock: Any) -> None:
    s = Setup()
    pruner = s.pruner(retention_completed=None, retention_dead=None, retention_cancelled=60)
    await s.finish(JobStatus.COMPLETED, 2)
    await s.finish(JobStatus.DEAD, 2)
    await s.finish(JobStatus.CANCELLED, 2)
    calls: list[JobStatus] = []
    prune = s.store.prune

    async def spy(queue: str, status: JobStatus, before: datetime, limit: int) -> int:
        calls.append(status)
        return await prune(queue, status, before, limit)

    s.store.prune = spy  # type: ignore[method-assign]
    await trio.sleep(1000 * 365 * DAY)
    assert await pruner.run_once(FENCE) == 2
    assert calls == [JobStatus.CANCELLED]  # a status kept forever is never even asked for
    assert (s.left(JobStatus.COMPLETED), s.left(JobStatus.DEAD), s.left()) == (2, 2, 4)


async def test_unfinished_jobs_and_other_queues_are_left_alone(autojump_clock: Any) -> None:
    s = Setup()
    await s.finish(JobStatus.COMPLETED, 2, queue="kyu:other")
    await s.finish(JobStatus.COMPLETED, 2)
    now = s.clock.now()
    unfinished = [
        NewJob(str(uuid.uuid4()), QUEUE, "t", "null", 0, 3, now, 10.0, JobStatus.PENDING),
        NewJob(str(uuid.uuid4()), QUEUE, "t", "null", 0, 3, now + timedelta(days=1), 10.0,
               JobStatus.SCHEDULED),
    ]  # fmt: skip
    await s.store.insert_jobs(unfinished, now)
    await trio.sleep(100 * DAY)
    assert await s.pruner().run_once(FENCE) == 2
    assert {j.status for j in s.store.jobs.values() if j.queue == QUEUE} == {
        JobStatus.PENDING,
        JobStatus.SCHEDULED,
    }
    assert sum(1 for j in s.store.jobs.values() if j.queue == "kyu:other") == 2


async def test_batches_are_bounded_and_a_pass_is_capped(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_pruner, "PRUNE_BATCH", 3)
    monkeypatch.setattr(_pruner, "PRUNE_BATCHES_PER_PASS", 4)
    s = Setup()
    await s.finish(JobStatus.COMPLETED, 14)  # 4 full batches (the cap), then 2 left
    await s.finish(JobStatus.DEAD, 7)  # 2 full batches and a short one
    asked: list[tuple[str, int, int]] = []
    prune = s.store.prune

    async def spy(queue: str, status: JobStatus, before: datetime, limit: int) -> int:
        n = await prune(queue, status, before, limit)
        asked.append((status.value, limit, n))
        return n

    s.store.prune = spy  # type: ignore[method-assign]
    await trio.sleep(31 * DAY)
    caplog.set_level(logging.INFO, logger="kyu_trio")
    assert await s.pruner().run_once(FENCE) == 12 + 7
    assert asked == [
        *[("completed", 3, 3)] * 4,
        ("cancelled", 3, 0),
        *[("dead", 3, 3)] * 2,
        ("dead", 3, 1),
    ]
    asked.clear()
    assert await s.pruner().run_once(FENCE) == 2  # the next pass goes on
    assert asked == [("completed", 3, 2), ("cancelled", 3, 0), ("dead", 3, 0)]
    assert await s.pruner().run_once(FENCE) == 0
    assert s.metrics.pruned == {"completed": 14, "cancelled": 0, "dead": 7}
    # One INFO line per pass that deleted something, and none for the empty pass.
    lines = [r for r in caplog.records if getattr(r, "kyu_event", None) == "pruned"]
    assert [r.getMessage() for r in lines] == [
        f"pruned 19 finished jobs of {QUEUE!r} past their retention (completed 12, dead 7)",
        f"pruned 2 finished jobs of {QUEUE!r} past their retention (completed 2)",
    ]
    assert [r.levelno for r in lines] == [logging.INFO] * 2
    assert lines[0].pruned == {"completed": 12, "dead": 7}  # type: ignore[attr-defined]


async def test_what_a_failed_pass_deleted_stays_counted_and_logged(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_pruner, "PRUNE_BATCH", 2)
    s = Setup()
    await s.finish(JobStatus.COMPLETED, 5)
    prune = s.store.prune
    calls = 0

    async def flaky(queue: str, status: JobStatus, before: datetime, limit: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KyuConnectionError("PostgreSQL at db:5432 is unreachable")
        return await prune(queue, status, before, limit)

    s.store.prune = flaky  # type: ignore[method-assign]
    await trio.sleep(8 * DAY)
    caplog.set_level(logging.INFO, logger="kyu_trio")
    with pytest.raises(KyuConnectionError):
        await s.pruner().run_once(FENCE)
    assert s.metrics.pruned["completed"] == 2
    assert [r.getMessage() for r in caplog.records if "pruned" in r.getMessage()] == [
        f"pruned 2 finished jobs of {QUEUE!r} past their retention (completed 2)"
    ]
    assert await s.pruner().run_once(FENCE) == 3  # the next pass finishes the job
    assert s.left() == 0


async def test_jobs_run_by_a_queue_are_pruned_and_the_metric_is_exported(
    autojump_clock: Any,
) -> None:
    queue = memory_queue(Config(queue_name=QUEUE, retention_completed=3600, retention_dead=60))

    @queue.handler("ok")
    async def ok(payload: None) -> None: ...

    @queue.handler("bad")
    async def bad(payload: None) -> None:
        raise ValueError("no")

    async with queue:
        done = await queue.enqueue_many([("ok", None)] * 3)
        dead = await queue.enqueue("bad", None, max_retries=0)
        await drain(queue)
        assert (await queue.inspect(dead)).status is JobStatus.DEAD
        pruner = Pruner(queue._context(), queue.config)
        await trio.sleep(61)
        assert await pruner.run_once(FENCE) == 1
        assert {j.id for j in await queue.list_jobs()} == set(done)
        await trio.sleep(3600)
        assert await pruner.run_once(FENCE) == 3
        assert await queue.list_jobs() == []
    text = generate_latest(queue.metrics.registry).decode()
    assert "# HELP kyu_jobs_pruned_total Finished jobs that this process deleted" in text
    assert "# TYPE kyu_jobs_pruned_total counter" in text
    for status, n in (("completed", 3), ("cancelled", 0), ("dead", 1)):
        assert f'kyu_jobs_pruned_total{{queue="{QUEUE}",status="{status}"}} {n}.0' in text


# ---- the settings ------------------------------------------------------------------------

RETENTIONS = ["retention_completed", "retention_cancelled", "retention_dead"]


def test_the_defaults_are_7_7_and_30_days() -> None:
    config = Config()
    assert (config.retention_completed, config.retention_cancelled, config.retention_dead) == (
        7 * DAY,
        7 * DAY,
        30 * DAY,
    )


@pytest.mark.parametrize("field", RETENTIONS)
@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        math.nan,
        math.inf,
        MAX_RETENTION * 1.01,
        pytest.param(10**5000, id="10**5000"),
        True,
        "7d",
        1e300,
    ],
)
def test_a_retention_is_a_positive_bounded_number_or_none(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        Config(**{field: value})
    message = str(info.value)
    assert "100 years" in message and "None" in message
    assert len(message) < 300


@pytest.mark.parametrize("field", RETENTIONS)
@pytest.mark.parametrize("value", [None, 1, 0.5, 86400, MAX_RETENTION])
def test_accepted_retentions(field: str, value: Any) -> None:
    assert getattr(Config(**{field: value}), field) == value


def test_the_cutoff_at_the_longest_retention_cannot_overflow() -> None:
    longest = timedelta(seconds=MAX_RETENTION)
    assert longest >= timedelta(days=36524)
    for now in (datetime(1970, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)):
        assert now - longest < now
