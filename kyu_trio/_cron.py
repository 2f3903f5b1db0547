"""Periodic jobs: a `CronEntry` (what to enqueue, on which schedule, in which timezone)
and the pure rules that say when it ticks. No I/O: the leader's `CronService` asks these
functions what is due and lets PostgreSQL decide, in one fenced statement, that a tick
is written once.

Schedules are parsed and matched by croniter (5 fields, ``@hourly``-style aliases, or 6
fields whose first is the second). croniter works on the entry's local wall time; the
rules below make its answer a sequence of strictly increasing, distinct UTC instants
across daylight-saving changes:

- a wall time that does not exist (the hour skipped when clocks go forward): an entry
  with a fixed hour ticks once at the end of the gap (``30 2 * * *`` on 2026-03-08 in
  New York: 03:00 EDT); an entry that runs every hour (hour field ``*``) has no tick
  there;
- a wall time that happens twice (the hour repeated when clocks go back): an entry with a
  fixed hour ticks at the first occurrence only (``30 1 * * *`` on 2026-11-01 in New
  York: 01:30 EDT, not again at 01:30 EST); an entry that runs every hour ticks at both,
  an hour apart, as the hours really pass.

These are Vixie cron's rules for fixed-time and wildcard jobs.

Example::

    entry = new_cron_entry("0 3 * * *", "nightly_report", None, timezone="Europe/Paris")
    tick = next_tick(entry, datetime.now(UTC))
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import attrs
from croniter import CroniterBadDateError, CroniterError, croniter

from ._config import Config, shown
from ._errors import ConfigError, CronEntryNotFound, InvalidJobError
from ._job import JobStatus
from ._ports import NewJob
from ._score import PRIORITY_MAX, PRIORITY_MIN
from ._validation import (
    MAX_RETRIES_LIMIT,
    check_job_timeout,
    check_job_type,
    encode_payload,
)

#: What happens to the most recent tick that fell while no process served the queue:
#: ``run_once`` enqueues it once, when serving resumes; ``skip`` drops it if it is found
#: more than `MISSED_GRACE` seconds after it fell. Earlier missed ticks never run.
MISSED_POLICIES = ("run_once", "skip")
#: A tick found later than this after it fell counts as missed for ``missed="skip"``.
#: Well above a leader change (two ``Config.leader_interval``) and a quick restart, so
#: that only a queue that nobody served loses its tick.
MISSED_GRACE = 60.0
#: Longest entry name, in characters (as for job types).
MAX_NAME_LENGTH = 200
#: `new_cron_entry`'s payload limit unless told: `Config`'s default.
DEFAULT_MAX_PAYLOAD_BYTES: int = Config().max_payload_bytes
#: croniter gives up looking for a next tick this many years ahead (a schedule such as
#: ``0 0 30 2 *`` never fires).
HORIZON_YEARS = 50

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
#: croniter's ``R`` (random) fields: each process would draw its own times.
_RANDOM = re.compile(r"(?:^|[\s,])R(?:\(|[\s,]|$)", re.IGNORECASE)
_SHAPE_HELP = (
    "use 5 fields (minute hour day-of-month month day-of-week, e.g. '*/15 * * * *'), 6 "
    "with the second first (e.g. '*/10 * * * * *'), or an alias: " + ", ".join(_ALIASES)
)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a cron entry's name must be a non-empty str, got {shown(name, 80)}")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"a cron entry's name must be at most {MAX_NAME_LENGTH} characters")
    # Names go into logs and the `kyu-trio cron` table, as job types do.
    if any(c in "\u2028\u2029" or not (" " <= c < "\x7f" or c > "\x9f") for c in name):
        raise ConfigError(f"a cron entry's name must not contain control characters: {name!r:.80}")
    return name


def _check_zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"timezone must be an IANA zone name (str), got {shown(name, 80)}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    close = difflib.get_close_matches(name, available_timezones(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"unknown timezone {name[:80]!r}{hint}: use an IANA zone name such as 'UTC', "
        "'Europe/Paris' or 'America/New_York'"
    )


def _parse(schedule: object) -> tuple[str, list[Any]]:
    """The schedule, stripped, and croniter's expansion of it; `ConfigError` if it is
    not one kyu-trio takes."""
    if not isinstance(schedule, str) or not schedule.strip():
        raise ConfigError(f"schedule must be a cron expression (str), got {shown(schedule, 80)}")
    text = " ".join(schedule.split())
    if text.startswith("@") and text.lower() not in _ALIASES:
        raise ConfigError(f"schedule {text[:80]!r} is not a cron expression: {_SHAPE_HELP}")
    if not text.startswith("@") and len(text.split()) not in (5, 6):
        raise ConfigError(f"schedule {text[:80]!r} has {len(text.split())} fields: {_SHAPE_HELP}")
    if _RANDOM.search(text):
        raise ConfigError(
            f"schedule {text[:80]!r} uses croniter's random 'R' field, which each process "
            "would draw differently: write the minute (or hour) you want"
        )
    try:
        expanded = croniter.expand(text, second_at_beginning=True)[0]
    except CroniterError as exc:
        raise ConfigError(
            f"schedule {text[:80]!r} is not a cron expression ({str(exc)[:200]}): {_SHAPE_HELP}"
        ) from None
    return text, expanded


@attrs.frozen
class CronEntry:
    """A periodic job: enqueue ``job_type`` with ``payload`` (JSON text) at every tick of
    ``schedule`` in ``timezone``. Built by `Queue.cron` (or `new_cron_entry`), which
    validate every field; constructing one directly validates the schedule, the
    timezone and the missed-tick policy.

    Example::

        entry = new_cron_entry("*/15 * * * *", "sync_crm", {"full": False})
        assert entry.name == "sync_crm" and entry.payload == '{"full":false}'
    """

    name: str = attrs.field(converter=_check_name)
    schedule: str
    job_type: str
    payload: str
    timezone: str = "UTC"
    priority: int = 0
    max_retries: int = 3
    #: Seconds; None: ``Config.default_job_timeout`` of the process that enqueues it.
    job_timeout: float | None = None
    missed: str = "run_once"
    _zone: ZoneInfo = attrs.field(init=False, repr=False, eq=False)
    _expanded: list[Any] = attrs.field(init=False, repr=False, eq=False)
    _parsed: croniter = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        text, expanded = _parse(self.schedule)
        object.__setattr__(self, "schedule", text)
        object.__setattr__(self, "_expanded", expanded)
        object.__setattr__(self, "_parsed", croniter(text, EPOCH, second_at_beginning=True))
        object.__setattr__(self, "_zone", _check_zone(self.timezone))
        if self.missed not in MISSED_POLICIES:
            raise ConfigError(
                f"missed must be one of {', '.join(map(repr, MISSED_POLICIES))}, "
                f"got {shown(self.missed, 80)}"
            )
        if next_tick(self, EPOCH) is None:
            raise ConfigError(
                f"schedule {self.schedule!r} never fires (no such date, e.g. February 30)"
            )

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    @property
    def every_hour(self) -> bool:
        """Whether the hour field is ``*`` (or spans all 24 hours): the wildcard case of
        the daylight-saving rules."""
        return bool(self._expanded[1] == ["*"])

    @property
    def _step(self) -> timedelta:
        """The schedule's resolution: ticks fall on whole seconds or whole minutes."""
        return timedelta(seconds=1) if len(self._expanded) > 5 else timedelta(minutes=1)

    def _matches(self, wall: datetime) -> bool:
        """Whether the naive wall time ``wall`` (on the schedule's resolution) matches."""
        return bool(self.iterate(wall - self._step).get_next(datetime) == wall)

    def iterate(self, start: datetime) -> croniter:
        """A croniter over this schedule from ``start`` (aware: in its zone; naive: wall
        time). A copy of the one parsed at construction: parsing costs three times as
        much as a step (croniter never changes what it parsed, only its position)."""
        it = copy.copy(self._parsed)
        it.set_current(start, force=True)
        return it


def new_cron_entry(
    schedule: str,
    job_type: str,
    payload: Any = None,
    *,
    name: str | None = None,
    timezone: str = "UTC",
    priority: int = 0,
    max_retries: int = 3,
    job_timeout: float | None = None,
    missed: str = "run_once",
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> CronEntry:
    """A validated `CronEntry`: the job's fields are checked as `enqueue` checks them
    (`InvalidJobError`), the schedule, timezone, name and policy as settings
    (`ConfigError`). ``name`` defaults to ``job_type``.

    Example::

        entry = new_cron_entry("0 9 * * mon-fri", "standup", timezone="Europe/Berlin")
    """
    job_type = check_job_type(job_type)
    text = encode_payload(payload, max_payload_bytes)
    for field, value, low, high in (
        ("priority", priority, PRIORITY_MIN, PRIORITY_MAX),
        ("max_retries", max_retries, 0, MAX_RETRIES_LIMIT),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidJobError(
                f"{field} must be an int from {low} to {high}, got {shown(value)}"
            )
    timeout = None if job_timeout is None else check_job_timeout(job_timeout)
    return CronEntry(
        name=job_type if name is None else name,
        schedule=schedule,
        job_type=job_type,
        payload=text,
        timezone=timezone,
        priority=priority,
        max_retries=max_retries,
        job_timeout=timeout,
        missed=missed,
    )


# ---- when an entry ticks ------------------------------------------------------------------


def _is_tick(entry: CronEntry, instant: datetime) -> bool:
    """Whether a time croniter proposes is a tick under the daylight-saving rules above."""
    local = instant.astimezone(entry.zone)
    offset = local.utcoffset()
    # Just after a change of offset, croniter may have moved a wall time that does not
    # exist (clocks went forward) to the end of the gap: kept for fixed hours only.
    shifted = (instant - entry._step).astimezone(entry.zone).utcoffset() != offset
    if shifted and not entry._matches(local.replace(tzinfo=None)):
        return not entry.every_hour
    if entry.every_hour or local.fold == 0:
        return True
    # The second occurrence of a repeated wall time (clocks went back).
    return local.replace(fold=0).utcoffset() == offset


def next_tick(entry: CronEntry, after: datetime) -> datetime | None:
    """The first tick strictly after ``after`` (an aware datetime), in UTC; None if the
    schedule has none in the next 50 years.

    Example::

        next_tick(entry, datetime(2026, 3, 8, 6, 0, tzinfo=UTC))
    """
    it = entry.iterate(after.astimezone(entry.zone))
    # A handful of proposals at most are refused (a repeated or skipped hour).
    for _ in range(10_000):
        try:
            proposed = it.get_next(datetime)
        except CroniterBadDateError:
            return None
        instant = proposed.astimezone(UTC)
        if instant > after and _is_tick(entry, instant):
            return instant
    raise AssertionError(f"no progress computing the next tick of {entry.schedule!r}")


def ticks_between(entry: CronEntry, start: datetime, end: datetime) -> Iterator[datetime]:
    """The ticks in ``(start, end]``, in order, in UTC.

    Example::

        list(ticks_between(entry, last_run, now))
    """
    tick = next_tick(entry, start)
    while tick is not None and tick <= end:
        yield tick
        tick = next_tick(entry, tick)


def latest_due_tick(entry: CronEntry, last_tick: datetime, now: datetime) -> datetime | None:
    """The most recent tick in ``(last_tick, now]``, or None if none is due.

    Ticks before it in that interval fell while no process served the queue: they are
    not replayed, only this one runs (once). Found in a few `next_tick` steps however
    long ago ``last_tick`` is: the search doubles a window back from ``now`` until it
    holds a tick.

    Example::

        tick = latest_due_tick(entry, state.last_tick, now)
    """
    first = next_tick(entry, last_tick)
    if first is None or first > now:
        return None
    window = entry._step
    while True:
        start = now - window
        if start <= first:
            start = last_tick
            break
        found = next_tick(entry, start)
        if found is not None and found <= now:
            break
        window *= 2
    latest = first
    for tick in ticks_between(entry, start, now):
        latest = tick
    return latest


def initial_tick(entry: CronEntry, now: datetime) -> datetime:
    """Where a newly recorded entry starts: its latest tick at or before ``now`` (so that
    registering never fires at once), or ``now`` if it had none.

    Example::

        initial_tick(new_cron_entry("0 * * * *", "t"), datetime(2026, 1, 1, 9, 30, tzinfo=UTC))
    """
    return latest_due_tick(entry, now - timedelta(days=366 * HORIZON_YEARS), now) or now


@attrs.frozen
class Decision:
    """What the leader does about an entry now: record ``tick`` as its last, and enqueue
    its job unless ``run`` is False (a missed tick under ``missed="skip"``)."""

    tick: datetime
    run: bool


def decide(entry: CronEntry, last_tick: datetime, now: datetime) -> Decision | None:
    """The tick to fire now, if any, and whether its job runs.

    Example::

        decision = decide(entry, last_tick, now)
        if decision is not None and decision.run:
            ...  # enqueue the job of decision.tick
    """
    tick = latest_due_tick(entry, last_tick, now)
    if tick is None:
        return None
    late = (now - tick).total_seconds()
    return Decision(tick, run=entry.missed == "run_once" or late <= MISSED_GRACE)


def cron_job(
    entry: CronEntry | CronState,
    queue: str,
    tick: datetime,
    job_id: str,
    default_job_timeout: float,
) -> NewJob:
    """The job a tick enqueues, or a run now (`Queue.run_cron_now`, from the entry as the
    database records it): pending, due at ``tick``.

    Example::

        job = cron_job(entry, "kyu:default", tick, new_job_ids(1)[0], 30.0)
    """
    return NewJob(
        id=job_id,
        queue=queue,
        job_type=entry.job_type,
        payload=entry.payload,
        priority=entry.priority,
        max_retries=entry.max_retries,
        scheduled_at=tick,
        job_timeout=default_job_timeout if entry.job_timeout is None else entry.job_timeout,
        status=JobStatus.PENDING,
    )


def entry_not_found(queue: str, name: object) -> CronEntryNotFound:
    """What `run_cron_now` raises for a ``name`` that names no entry the queue recorded.

    Example::

        raise entry_not_found("kyu:default", "nightly_report")
    """
    if not isinstance(name, str):
        return CronEntryNotFound(f"cron entry names are str, got {type(name).__name__}")
    return CronEntryNotFound(
        f"queue {queue!r} has no cron entry named {name[:200]!r} (`kyu-trio cron` lists those "
        "recorded; an entry is recorded once a process serving the queue registers it)"
    )


@attrs.frozen
class CronState:
    """A periodic job as the database records it (table ``kyu_cron``): its definition as
    the leader last registered it, the last tick fired (or skipped), and whether the
    current leader registers it at all (entries no process registers any more stay, and
    never fire).

    Example::

        for state in await queue.cron_entries():
            print(state.name, state.schedule, state.last_tick, state.next_run(now))
    """

    queue: str
    name: str
    schedule: str
    timezone: str
    job_type: str
    payload: str
    priority: int
    max_retries: int
    job_timeout: float | None
    missed: str
    last_tick: datetime
    registered: bool
    updated_at: datetime

    def entry(self) -> CronEntry | None:
        """The entry this row describes; None if this kyu-trio cannot read its schedule
        or timezone (written by another version, or a zone this machine lacks)."""
        try:
            return CronEntry(
                name=self.name,
                schedule=self.schedule,
                job_type=self.job_type,
                payload=self.payload,
                timezone=self.timezone,
                priority=self.priority,
                max_retries=self.max_retries,
                job_timeout=self.job_timeout,
                missed=self.missed,
            )
        except ConfigError:
            return None

    def next_run(self, now: datetime) -> datetime | None:
        """The tick that fires next while the queue is served: one already due (then it
        runs at once) or the next one after ``now``; None for an entry that is not
        registered or cannot be read."""
        entry = self.entry()
        if entry is None or not self.registered:
            return None
        return latest_due_tick(entry, self.last_tick, now) or next_tick(entry, now)
