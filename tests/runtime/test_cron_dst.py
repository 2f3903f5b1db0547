"""Issue 13, point 3: the cron service walks the daylight-saving changes of 2026 in New
York under MockClock, and enqueues each tick's job at the exact instant the documented
rules give (docs/how-to/periodic-jobs.md quotes these lists)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import trio

from kyu_trio import MemoryBroker, MemoryStore, TrioClock
from kyu_trio._cron import CronEntry, new_cron_entry
from kyu_trio._runtime._cron import CronService
from kyu_trio._runtime._metrics import Metrics
from kyu_trio._runtime._service import Context

QUEUE = "kyu:cron"
NY = "America/New_York"
HOUR = 3600.0


class Setup:
    def __init__(self, epoch: datetime) -> None:
        self.store = MemoryStore()
        self.broker = MemoryBroker()
        self.clock = TrioClock(epoch)
        self.context = Context(
            queue=QUEUE,
            store=self.store,
            broker=self.broker,
            clock=self.clock,
            log=logging.getLogger("kyu_trio"),
            metrics=Metrics(QUEUE, "test", lambda _: True),
        )

    async def walk(self, entries: Sequence[CronEntry], hours: float) -> None:
        """Serve as the leader for ``hours`` of virtual time."""
        fence = await self.store.lead(QUEUE, "leader", self.clock.now(), 10 * 365 * 86400.0)
        assert fence is not None
        with trio.move_on_after(hours * HOUR):
            await CronService(self.context, entries).run(fence)

    def ticks(self, job_type: str, start: str = "", end: str = "~") -> list[str]:
        """The jobs of ``job_type``, as New York wall times, within [start, end)."""
        zone = new_cron_entry("@daily", "t", timezone=NY).zone
        jobs = sorted(
            (j for j in self.store.jobs.values() if j.job_type == job_type),
            key=lambda j: j.scheduled_at,
        )
        for job in jobs:
            # Enqueued at the very tick (the service sleeps until it), as a pending job.
            assert job.created_at == job.scheduled_at and job.status.value == "pending"
        walls = [j.scheduled_at.astimezone(zone).isoformat() for j in jobs]
        return [w for w in walls if start <= w < end]


async def test_spring_forward_in_new_york(autojump_clock: Any) -> None:
    """2026-03-08 02:00 EST -> 03:00 EDT: 02:00-02:59 never happens."""
    s = Setup(datetime(2026, 3, 7, 12, tzinfo=UTC))
    await s.walk(
        [
            new_cron_entry("30 2 * * *", "daily_0230", timezone=NY),
            new_cron_entry("0 * * * *", "hourly", timezone=NY),
            new_cron_entry("*/30 * * * *", "half_hourly", timezone=NY),
            new_cron_entry("0 15 2 * * *", "seconds_field_0215", timezone=NY),
        ],
        hours=48,
    )
    # A fixed time in the skipped hour runs once, at its end.
    assert s.ticks("daily_0230") == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]
    assert s.ticks("seconds_field_0215") == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:15:00-04:00",
    ]
    # Every-hour schedules have no tick in the skipped hour.
    assert s.ticks("hourly", "2026-03-08T00", "2026-03-08T05") == [
        "2026-03-08T00:00:00-05:00",
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T04:00:00-04:00",
    ]
    assert s.ticks("half_hourly", "2026-03-08T01", "2026-03-08T04") == [
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T01:30:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T03:30:00-04:00",
    ]
    # Elapsed time is unaffected: one job per real hour (half hour), none doubled.
    assert len(s.ticks("hourly")) == 47
    assert len(s.ticks("half_hourly")) == 95
    assert await s.broker.size(QUEUE) == len(s.store.jobs)


async def test_fall_back_in_new_york(autojump_clock: Any) -> None:
    """2026-11-01 02:00 EDT -> 01:00 EST: 01:00-01:59 happens twice."""
    s = Setup(datetime(2026, 10, 31, 12, tzinfo=UTC))
    await s.walk(
        [
            new_cron_entry("30 1 * * *", "daily_0130", timezone=NY),
            new_cron_entry("0 * * * *", "hourly", timezone=NY),
            new_cron_entry("*/30 1-2 * * *", "hours_1_2", timezone=NY),
            new_cron_entry("@daily", "midnight", timezone=NY),
        ],
        hours=48,
    )
    # A fixed time in the repeated hour runs once, at its first occurrence.
    assert s.ticks("daily_0130") == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]
    assert s.ticks("hours_1_2", "2026-11-01", "2026-11-02") == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T02:30:00-05:00",
    ]
    # Every-hour schedules run in both: the hours really pass.
    assert s.ticks("hourly", "2026-11-01T00", "2026-11-01T03") == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]
    assert s.ticks("midnight") == ["2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00"]
    assert len(s.ticks("hourly")) == 47
