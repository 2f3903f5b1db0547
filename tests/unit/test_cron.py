"""The pure rules of periodic jobs (`kyu_trio._cron`): what an entry accepts, when it
ticks (daylight-saving changes included, checked against an independent minute-by-minute
reference), and which tick is due after a gap."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from kyu_trio import ConfigError, InvalidJobError, Queue
from kyu_trio._cron import (
    MISSED_GRACE,
    CronEntry,
    cron_job,
    decide,
    initial_tick,
    latest_due_tick,
    new_cron_entry,
    next_tick,
    ticks_between,
)
from kyu_trio._job import JobStatus

NY = "America/New_York"


def at(*args: int, tz: str = "UTC") -> datetime:
    """An instant given as a wall time in ``tz``; fold=1 is not needed by these tests."""
    return datetime(*args, tzinfo=ZoneInfo(tz)).astimezone(UTC)  # type: ignore[misc]


def walls(entry: CronEntry, start: datetime, end: datetime) -> list[str]:
    return [t.astimezone(entry.zone).isoformat() for t in ticks_between(entry, start, end)]


# ---- what an entry accepts --------------------------------------------------------------


def test_an_entry_defaults_its_name_to_the_job_type_and_encodes_the_payload() -> None:
    entry = new_cron_entry("*/15 * * * *", "sync", {"full": False, "who": "ü"})
    assert (entry.name, entry.job_type, entry.payload) == (
        "sync",
        "sync",
        '{"full":false,"who":"ü"}',
    )
    assert (entry.timezone, entry.priority, entry.max_retries, entry.job_timeout) == (
        "UTC",
        0,
        3,
        None,
    )
    assert entry.missed == "run_once"
    named = new_cron_entry(" 0  3 * * * ", "t", name="nightly", job_timeout=5, priority=-3)
    assert (named.name, named.schedule, named.job_timeout, named.priority) == (
        "nightly",
        "0 3 * * *",
        5.0,
        -3,
    )


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("", "must be a cron expression"),
        ("* * *", "has 3 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("61 * * * *", "out of range"),
        ("*/0 * * * *", "not a cron expression"),
        ("mon * * * *", "not a cron expression"),
        ("@reboot", "not a cron expression"),
        ("@every 5m", "not a cron expression"),
        ("R * * * *", "random 'R' field"),
        ("0 R(1-5) * * *", "random 'R' field"),
        ("H * * * *", "not a cron expression"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_bad_schedules_are_config_errors_that_say_what_to_write(
    schedule: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        new_cron_entry(schedule, "t")
    if "fields" in message or "not a cron" in message:
        assert "5 fields" in str(info.value) and "@hourly" in str(info.value)


def test_an_unknown_timezone_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'America/New_York'\?"):
        new_cron_entry("* * * * *", "t", timezone="America/New_Yrok")
    for bad in ("", "../../etc/passwd", "/usr/share/zoneinfo/UTC", "Nowhere/At_All", 5):
        with pytest.raises(ConfigError, match="timezone"):
            new_cron_entry("* * * * *", "t", timezone=bad)  # type: ignore[arg-type]


def test_the_job_fields_are_checked_as_enqueue_checks_them() -> None:
    for kwargs in (
        {"priority": 40000},
        {"priority": True},
        {"max_retries": -1},
        {"job_timeout": 0},
        {"job_timeout": float("nan")},
    ):
        with pytest.raises(InvalidJobError):
            new_cron_entry("* * * * *", "t", **kwargs)
    with pytest.raises(InvalidJobError, match="JSON"):
        new_cron_entry("* * * * *", "t", {1, 2})
    with pytest.raises(InvalidJobError, match="max_payload_bytes=10"):
        new_cron_entry("* * * * *", "t", "x" * 20, max_payload_bytes=10)
    with pytest.raises(InvalidJobError, match="job_type"):
        new_cron_entry("* * * * *", "")
    for name in ("", "a\nb", "x" * 201):
        with pytest.raises(ConfigError, match="name"):
            new_cron_entry("* * * * *", "t", name=name)
    with pytest.raises(ConfigError, match="missed must be one of 'run_once', 'skip'"):
        new_cron_entry("* * * * *", "t", missed="later")


def test_queue_cron_refuses_two_entries_of_one_name() -> None:
    queue = Queue()
    queue.cron("0 * * * *", "report")
    queue.cron("30 * * * *", "report", name="report-half-past")
    with pytest.raises(ConfigError, match="named 'report' is already registered"):
        queue.cron("*/5 * * * *", "report")
    with pytest.raises(InvalidJobError, match="max_payload_bytes"):
        Queue(attrs_config(max_payload_bytes=10)).cron("* * * * *", "t", "x" * 20)


def attrs_config(**fields: Any) -> Any:
    from kyu_trio import Config

    return Config(**fields)


def test_the_decorator_registers_the_handler_and_the_entry() -> None:
    queue = Queue()

    @queue.periodic("@hourly", "cleanup", {"days": 7}, timezone=NY)
    async def cleanup(payload: dict[str, int]) -> None: ...

    assert queue._registry.lookup("cleanup").fn is cleanup
    [entry] = queue._registry.cron
    assert (entry.name, entry.schedule, entry.timezone, entry.payload) == (
        "cleanup",
        "@hourly",
        NY,
        '{"days":7}',
    )


# ---- when an entry ticks ----------------------------------------------------------------


def test_aliases_and_six_fields_with_the_second_first() -> None:
    start = at(2026, 5, 5, 12, 0, 1)
    hourly = new_cron_entry("@hourly", "t")
    assert list(ticks_between(hourly, start, start + timedelta(hours=2))) == [
        at(2026, 5, 5, 13),
        at(2026, 5, 5, 14),
    ]
    daily = new_cron_entry("@daily", "t", timezone="Asia/Tokyo")
    assert next_tick(daily, start) == at(2026, 5, 6, tz="Asia/Tokyo")
    seconds = new_cron_entry("*/20 * * * * *", "t")
    assert list(ticks_between(seconds, start, start + timedelta(minutes=1))) == [
        at(2026, 5, 5, 12, 0, 20),
        at(2026, 5, 5, 12, 0, 40),
        at(2026, 5, 5, 12, 1, 0),
    ]
    weekdays = new_cron_entry("0 9 * * mon-fri", "t", timezone="Europe/Berlin")
    friday = at(2026, 5, 8, 10, tz="Europe/Berlin")
    assert next_tick(weekdays, friday) == at(2026, 5, 11, 9, tz="Europe/Berlin")


def test_next_tick_is_strictly_after_and_works_from_any_instant() -> None:
    entry = new_cron_entry("0 * * * *", "t")
    tick = at(2026, 5, 5, 13)
    assert next_tick(entry, tick) == at(2026, 5, 5, 14)
    assert next_tick(entry, tick - timedelta(microseconds=1)) == tick
    # Any aware datetime will do, in any zone.
    assert next_tick(entry, tick.astimezone(ZoneInfo("Asia/Kolkata"))) == at(2026, 5, 5, 14)


def test_daylight_saving_in_new_york_spring_forward() -> None:
    """2026-03-08: 02:00 EST becomes 03:00 EDT; 02:00-02:59 does not exist."""
    start, end = at(2026, 3, 7, 12), at(2026, 3, 9, 12)
    fixed = new_cron_entry("30 2 * * *", "t", timezone=NY)
    assert walls(fixed, start, end) == ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
    hourly = new_cron_entry("30 * * * *", "t", timezone=NY)
    assert walls(hourly, at(2026, 3, 8, 0, tz=NY), at(2026, 3, 8, 4, tz=NY)) == [
        "2026-03-08T00:30:00-05:00",
        "2026-03-08T01:30:00-05:00",
        "2026-03-08T03:30:00-04:00",
    ]
    # Several fixed times in the gap: one tick at its end.
    two = new_cron_entry("0,30 2 * * *", "t", timezone=NY)
    assert walls(two, at(2026, 3, 8, 0, tz=NY), at(2026, 3, 8, 23, tz=NY)) == [
        "2026-03-08T03:00:00-04:00"
    ]


def test_daylight_saving_in_new_york_fall_back() -> None:
    """2026-11-01: 02:00 EDT becomes 01:00 EST; 01:00-01:59 happens twice."""
    fixed = new_cron_entry("30 1 * * *", "t", timezone=NY)
    assert walls(fixed, at(2026, 10, 31, 12), at(2026, 11, 2, 12)) == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]
    hourly = new_cron_entry("0 * * * *", "t", timezone=NY)
    assert walls(hourly, at(2026, 11, 1, 4), at(2026, 11, 1, 8)) == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T03:00:00-05:00",
    ]
    # Hours 1-2 are fixed hours: the repeated 01:xx runs once.
    some = new_cron_entry("*/30 1-2 * * *", "t", timezone=NY)
    assert walls(some, at(2026, 11, 1, 4), at(2026, 11, 1, 8)) == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T02:30:00-05:00",
    ]


def reference(entry: CronEntry, start: datetime, end: datetime) -> list[datetime]:
    """Ticks in ``[start, end)``, minute by minute in UTC, by the documented rules, from
    croniter's naive wall-time matches alone (no timezone arithmetic of croniter's)."""
    zone = entry.zone
    pad = timedelta(hours=3)
    first = (start.astimezone(zone) - pad).replace(tzinfo=None)
    last = (end.astimezone(zone) + pad).replace(tzinfo=None)
    matches = set()
    naive = croniter(entry.schedule, first, second_at_beginning=True)
    while (wall := naive.get_next(datetime)) <= last:
        matches.add(wall)
    ticks = []
    t = start
    previous = (t - timedelta(minutes=1)).astimezone(zone).utcoffset()
    assert previous is not None
    while t < end:
        local = t.astimezone(zone)
        offset = local.utcoffset()
        assert offset is not None
        wall = local.replace(tzinfo=None)
        if offset > previous and not entry.every_hour:
            # Clocks went forward: wall times [t + previous, t + offset) do not exist.
            gap = (t + previous).replace(tzinfo=None)
            if any(m for m in matches if gap <= m < wall):
                ticks.append(t)
                previous = offset
                t += timedelta(minutes=1)
                continue
        previous = offset
        repeated = local.replace(fold=1 - local.fold).utcoffset() != offset
        if wall in matches and not (repeated and local.fold == 1 and not entry.every_hour):
            ticks.append(t)
        t += timedelta(minutes=1)
    return ticks


def transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    found, t = [], datetime(year, 1, 1, tzinfo=UTC)
    before = t.astimezone(zone).utcoffset()
    while t.year == year:
        now = t.astimezone(zone).utcoffset()
        if now != before:
            found.append(t)
        before, t = now, t + timedelta(hours=1)
    return found


ZONES = [NY, "Europe/London", "Europe/Dublin", "Australia/Lord_Howe", "America/Santiago"]
SCHEDULES = [
    "30 2 * * *",
    "0 * * * *",
    "*/15 * * * *",
    "30 1 * * *",
    "*/20 0-2 * * *",
    "0 0 * * *",
    "45 23 * * *",
]


@pytest.mark.parametrize("zone", ZONES)
def test_ticks_match_the_reference_around_every_change_of_2026(zone: str) -> None:
    """Zones with a 30-minute change (Lord Howe), negative DST in the data (Dublin),
    changes at midnight (Santiago), and both hemispheres."""
    changes = transitions(ZoneInfo(zone), 2026)
    assert len(changes) == 2
    for change in changes:
        start, end = change - timedelta(hours=28), change + timedelta(hours=28)
        for schedule in SCHEDULES:
            entry = new_cron_entry(schedule, "t", timezone=zone)
            found = list(ticks_between(entry, start - timedelta(microseconds=1), end))
            found = [t for t in found if t < end]
            assert found == reference(entry, start, end), (zone, change, schedule)
            assert all(a < b for a, b in itertools.pairwise(found))


def test_a_year_of_daily_ticks_in_new_york_is_one_per_day() -> None:
    entry = new_cron_entry("30 1 * * *", "t", timezone=NY)
    ticks = list(ticks_between(entry, at(2026, 1, 1), at(2027, 1, 1)))
    days = [t.astimezone(entry.zone).date() for t in ticks]
    assert len(ticks) == 365 and len(set(days)) == 365


# ---- which tick is due ----------------------------------------------------------------------


def test_latest_due_tick_is_the_most_recent_one_and_earlier_ones_are_dropped() -> None:
    entry = new_cron_entry("*/10 * * * *", "t")
    last = at(2026, 5, 5, 12)
    assert latest_due_tick(entry, last, last) is None
    assert latest_due_tick(entry, last, at(2026, 5, 5, 12, 9, 59)) is None
    assert latest_due_tick(entry, last, at(2026, 5, 5, 12, 10)) == at(2026, 5, 5, 12, 10)
    # Three ticks fell (12:10, 12:20, 12:30): only the last is due.
    assert latest_due_tick(entry, last, at(2026, 5, 5, 12, 35)) == at(2026, 5, 5, 12, 30)
    # Fired: nothing more until the next tick.
    assert latest_due_tick(entry, at(2026, 5, 5, 12, 30), at(2026, 5, 5, 12, 35)) is None


def test_latest_due_tick_after_a_long_gap_takes_few_steps() -> None:
    seconds = new_cron_entry("*/3 * * * * *", "t")
    started = time.perf_counter()
    now = at(2026, 5, 5, 12, 0, 7) + timedelta(milliseconds=500)
    assert latest_due_tick(seconds, at(2024, 1, 1), now) == at(2026, 5, 5, 12, 0, 6)
    weekdays = new_cron_entry("0 9 * * mon-fri", "t", timezone="Europe/Berlin")
    monday = at(2026, 5, 11, 8, tz="Europe/Berlin")
    assert latest_due_tick(weekdays, at(2020, 1, 1), monday) == at(
        2026, 5, 8, 9, tz="Europe/Berlin"
    )
    assert time.perf_counter() - started < 1.0


def test_latest_due_tick_in_the_repeated_hour() -> None:
    """Serving resumes at 01:59 EST on 2026-11-01, last tick the day before: the daily
    01:30 tick of that day is 01:30 EDT (its second occurrence is no tick)."""
    entry = new_cron_entry("*/5 1 * * *", "t", timezone=NY)
    now = datetime(2026, 11, 1, 1, 59, fold=1, tzinfo=ZoneInfo(NY)).astimezone(UTC)
    due = latest_due_tick(entry, at(2026, 10, 31, 12), now)
    assert due is not None
    assert due.astimezone(entry.zone).isoformat() == "2026-11-01T01:55:00-04:00"


def test_a_new_entry_starts_at_its_latest_tick_so_registering_never_fires() -> None:
    entry = new_cron_entry("0 * * * *", "t")
    now = at(2026, 5, 5, 12, 30)
    assert initial_tick(entry, now) == at(2026, 5, 5, 12)
    assert latest_due_tick(entry, initial_tick(entry, now), now) is None
    assert initial_tick(entry, at(2026, 5, 5, 12)) == at(2026, 5, 5, 12)
    yearly = new_cron_entry("0 0 29 2 *", "t")
    assert initial_tick(yearly, now) == at(2024, 2, 29)


def test_missed_ticks_run_once_or_are_skipped_after_the_grace() -> None:
    last = at(2026, 5, 5, 12)
    run = new_cron_entry("0 * * * *", "t")
    skip = new_cron_entry("0 * * * *", "t", missed="skip")
    tick = at(2026, 5, 5, 15)
    on_time = tick + timedelta(seconds=MISSED_GRACE)
    late = on_time + timedelta(seconds=1)
    for now, runs in ((tick, True), (on_time, True), (late, False)):
        decision = decide(skip, last, now)
        assert decision is not None and (decision.tick, decision.run) == (tick, runs)
        decision = decide(run, last, now)
        assert decision is not None and (decision.tick, decision.run) == (tick, True)
    assert decide(run, tick, late) is None


def test_the_job_of_a_tick() -> None:
    entry = new_cron_entry("0 * * * *", "t", [1], priority=4, max_retries=0)
    tick = at(2026, 5, 5, 13)
    job = cron_job(entry, "kyu:q", tick, "id-1", 30.0)
    assert (job.id, job.queue, job.job_type, job.payload, job.priority) == (
        "id-1",
        "kyu:q",
        "t",
        "[1]",
        4,
    )
    assert (job.max_retries, job.scheduled_at, job.job_timeout, job.status) == (
        0,
        tick,
        30.0,
        JobStatus.PENDING,
    )
    timed = new_cron_entry("0 * * * *", "t", job_timeout=2.5)
    assert cron_job(timed, "kyu:q", tick, "id-2", 30.0).job_timeout == 2.5
