"""Every read of the dashboard: plain SELECTs on one connection of its own read pool, in
a read-only transaction, each bounded so that it stays fast on a table of millions of
jobs (and cut short by the pool's statement timeout if it does not).

Counts by status are exact up to `DashboardConfig.exact_count_limit` (a LIMITed scan of
the status's partial index) and above it the planner's estimate, from the table's
statistics, flagged as such. The per-minute chart counts the newest completions and
failures of the hour exactly, up to `CHART_EXACT` rows, and estimates the older minutes
of a busier hour from a sample of each minute. The list is `_query`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import psycopg

from .._cron import CronState
from .._job import JobStatus
from .._processes import ProcessInfo
from .._store import _queries as q
from ._query import Cursor, JobFilter, count_query, list_query

#: Rows each series of the chart counts exactly (newest first) before it samples.
CHART_EXACT = 30_000
#: Rows the sampled minutes of a series read at most, all together.
CHART_SAMPLED = 10_000
CHART_MINUTES = 60
#: Largest payload, result or progress shown (their first bytes; the size is said).
SHOWN_BYTES = 256 * 1024
#: Most runs of a job shown (`Config.max_attempts_kept` keeps 20 by default).
SHOWN_ATTEMPTS = 100
FAILED_OUTCOMES = ("failed", "dead", "timed_out", "lost")

Conn = psycopg.Connection[Any]


# ---- the server ------------------------------------------------------------------------


@attrs.frozen
class ServerInfo:
    """What the read connection found: where it is (no password), and whether it can
    write at all."""

    address: str
    in_recovery: bool
    #: The role's or database's ``default_transaction_read_only``.
    read_only: bool
    schema_version: int
    has_processes: bool
    #: Migration 013's indexes (the failed list and the failures chart need them).
    has_dashboard_indexes: bool

    @property
    def writable(self) -> bool:
        return not (self.in_recovery or self.read_only)


def server_info(conn: Conn) -> ServerInfo:
    row = conn.execute(
        """
        SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on',
               to_regclass('kyu_schema_version') IS NOT NULL,
               to_regclass('kyu_processes') IS NOT NULL,
               to_regclass('kyu_attempts_finished_idx') IS NOT NULL
               AND to_regclass('kyu_jobs_failed_idx') IS NOT NULL
        """
    ).fetchone()
    assert row is not None
    version = 0
    if row[2]:
        found = conn.execute(q.CURRENT_VERSION).fetchone()
        version = int(found[0]) if found else 0
    info = conn.info
    host = info.host if not info.host.startswith("/") else "localhost (socket)"
    address = f"{host}:{info.port}/{info.dbname}"
    return ServerInfo(address, bool(row[0]), bool(row[1]), version, bool(row[3]), bool(row[4]))


def discover_queues(conn: Conn, info: ServerInfo) -> list[str]:
    """The queues the small tables name: paused or resumed once, led, with cron entries,
    limits or serving processes. Never a scan of kyu_jobs."""
    if info.schema_version < 9:
        return []
    tables = ["kyu_queues", "kyu_leaders", "kyu_cron", "kyu_limits"]
    if info.has_processes:
        tables.append("kyu_processes")
    sql = " UNION ".join(f"SELECT queue FROM {t}" for t in tables)
    return sorted(r[0] for r in conn.execute(sql).fetchall())


# ---- counts ----------------------------------------------------------------------------


@attrs.frozen
class Count:
    """A number of jobs: exact, or the planner's estimate ("about")."""

    value: int
    exact: bool


# Each status's count reads its partial index in index order (so that no plan can be a
# scan of the table), at most ``cap`` entries. Scheduled jobs share kyu_jobs_due_idx with
# failed ones: both together, less the failed ones (which have an index of their own).
_CAPPED = {
    "pending": ("status = 'pending'", "seq"),
    "running": ("status = 'running'", "heartbeat_at"),
    "completed": ("status = 'completed'", "completed_at"),
    "dead": ("status = 'dead'", "updated_at DESC"),
    "cancelled": ("status = 'cancelled'", "updated_at"),
    "failed": ("status = 'failed'", "updated_at"),
    "due": ("status IN ('scheduled', 'failed')", "scheduled_at"),
}
COUNTS = "SELECT " + ",\n       ".join(
    f"(SELECT count(*) FROM (SELECT 1 FROM kyu_jobs WHERE queue = %(queue)s AND {pred} "
    f"ORDER BY {order} LIMIT %(cap)s) AS {name})"
    for name, (pred, order) in _CAPPED.items()
)
# Without migration 013 (a replica behind, an older primary): failed ones through the
# due index, with the status read from each row.
COUNTS_BEFORE_013 = COUNTS.replace(
    "status = 'failed' ORDER BY updated_at", "status = 'failed' ORDER BY scheduled_at"
)

# The planner's statistics: rows now (its estimate of the table's size from the pages it
# has now, as the planner scales them) and the most common values of queue and status.
STATISTICS = """
SELECT CASE WHEN c.relpages > 0 AND c.reltuples > 0
            THEN c.reltuples / c.relpages
                 * (pg_relation_size(c.oid) / current_setting('block_size')::float8)
            END,
       s.attname, s.n_distinct, s.most_common_vals::text, s.most_common_freqs
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = 'kyu_jobs'
                    AND s.attname IN ('queue', 'status')
WHERE c.oid = to_regclass('kyu_jobs')
"""


@attrs.frozen
class _Column:
    n_distinct: float
    common: dict[str, float]

    def fraction(self, value: str, rows: float) -> float:
        if value in self.common:
            return self.common[value]
        distinct = -self.n_distinct * rows if self.n_distinct < 0 else self.n_distinct
        rest = max(distinct - len(self.common), 1.0)
        return max(0.0, 1.0 - sum(self.common.values())) / rest


def _array_text(text: str) -> list[str]:
    """The elements of an ``anyarray`` printed as text (``{a,"b c"}``)."""
    values: list[str] = []
    body = text[1:-1]
    i = 0
    while i < len(body):
        if body[i] == '"':
            j, chars = i + 1, []
            while body[j] != '"':
                if body[j] == "\\":
                    j += 1
                chars.append(body[j])
                j += 1
            values.append("".join(chars))
            i = j + 2
        else:
            j = body.find(",", i)
            j = len(body) if j < 0 else j
            values.append(body[i:j])
            i = j + 1
    return values


def estimates(conn: Conn, queue: str) -> dict[str, int] | None:
    """The planner's estimate of each status's rows in ``queue`` (None: no statistics
    yet, the table was never analyzed)."""
    rows = conn.execute(STATISTICS).fetchall()
    if not rows or rows[0][0] is None:
        return None
    total = float(rows[0][0])
    columns: dict[str, _Column] = {}
    for _, name, n_distinct, common, freqs in rows:
        if name is None:
            continue
        values = _array_text(common) if common else []
        columns[name] = _Column(
            float(n_distinct or 0), dict(zip(values, freqs or [], strict=False))
        )
    if "queue" not in columns or "status" not in columns:
        return None
    share = total * columns["queue"].fraction(queue, total)
    return {s.value: round(share * columns["status"].fraction(s.value, total)) for s in JobStatus}


def queue_counts(conn: Conn, queue: str, cap: int, info: ServerInfo) -> dict[JobStatus, Count]:
    sql = COUNTS if info.has_dashboard_indexes else COUNTS_BEFORE_013
    row = conn.execute(sql, {"queue": queue, "cap": cap}).fetchone()
    assert row is not None
    found = dict(zip(_CAPPED, (int(v) for v in row), strict=True))
    failed, due = found.pop("failed"), found.pop("due")
    found["failed"] = failed
    found["scheduled"] = due - failed if failed < cap else due
    capped = {name for name, n in found.items() if n >= cap}
    if due >= cap:
        capped.add("scheduled")
    guessed = estimates(conn, queue) if capped else None
    counts: dict[JobStatus, Count] = {}
    for status in JobStatus:
        n = found[status.value]
        if status.value not in capped:
            counts[status] = Count(n, True)
        else:
            # Never below what was counted: the estimate is "about", the count certain.
            guess = guessed.get(status.value, 0) if guessed else 0
            counts[status] = Count(max(guess, cap), False)
    return counts


def lag_seconds(conn: Conn, queue: str, now: datetime) -> float:
    """Age of the oldest due job that has not started (0: none waits)."""
    row = conn.execute(q.OLDEST_DUE, {"queue": queue, "now": now}).fetchone()
    oldest = row[0] if row else None
    return max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0


# ---- the chart -------------------------------------------------------------------------


@attrs.frozen
class Minute:
    start: datetime
    completed: int
    failed: int
    #: Each count is estimated from a sample of the minute (in a busy hour).
    completed_estimated: bool = False
    failed_estimated: bool = False

    @property
    def estimated(self) -> bool:
        return self.completed_estimated or self.failed_estimated


# Each exact query: per minute, the rows of the queue and the rows examined (the same
# for completions, whose index is per queue; runs of other queues too for failures).
_COMPLETED_EXACT = """
SELECT date_trunc('minute', completed_at), count(*), count(*) FROM (
    SELECT completed_at FROM kyu_jobs
    WHERE queue = %(queue)s AND status = 'completed'
      AND completed_at >= %(since)s AND completed_at < %(until)s
    ORDER BY completed_at DESC LIMIT %(cap)s
) AS c GROUP BY 1
"""
_COMPLETED_SAMPLED = """
SELECT m, (SELECT count(*) FROM kyu_jobs
           WHERE queue = %(queue)s AND status = 'completed'
             AND completed_at >= m AND completed_at < m + %(window)s)
FROM unnest(%(minutes)s::timestamptz[]) AS m
"""
# The queue of each run is its job's: one primary-key lookup per run (a correlated
# subquery, so that no plan can join by walking a whole queue instead).
_QUEUE_OF_RUN = "(SELECT j.queue FROM kyu_jobs j WHERE j.id = a.job_id) = %(queue)s"
_FAILED_EXACT = f"""
SELECT date_trunc('minute', a.finished_at), count(*) FILTER (WHERE {_QUEUE_OF_RUN}), count(*)
FROM (
    SELECT job_id, finished_at FROM kyu_attempts
    WHERE finished_at >= %(since)s AND finished_at < %(until)s
      AND outcome IN {FAILED_OUTCOMES!r}
    ORDER BY finished_at DESC LIMIT %(cap)s
) AS a
GROUP BY 1
"""
_FAILED_SAMPLED = f"""
SELECT m, (SELECT count(*) FROM kyu_attempts a
           WHERE a.finished_at >= m AND a.finished_at < m + %(window)s
             AND a.outcome IN {FAILED_OUTCOMES!r} AND {_QUEUE_OF_RUN})
FROM unnest(%(minutes)s::timestamptz[]) AS m
"""


def _series(
    conn: Conn, exact: str, sampled: str, queue: str, minutes: list[datetime], until: datetime
) -> tuple[dict[datetime, int], set[datetime]]:
    """Per minute counts of one series, and the minutes estimated: exact over the newest
    `CHART_EXACT` rows examined; the minutes before those (a busy hour) from a window of
    each, scaled up, the windows reading about `CHART_SAMPLED` rows in all."""
    params: dict[str, Any] = {"queue": queue, "since": minutes[0], "until": until}
    rows = conn.execute(exact, {**params, "cap": CHART_EXACT}).fetchall()
    counts = {m: int(n) for m, n, _ in rows}
    examined = {m: int(e) for m, _, e in rows}
    if sum(examined.values()) < CHART_EXACT:
        return counts, set()
    # Cut short: the oldest minute examined is partial, and those before it were not
    # examined. Sample those, at the rate of rows the examined ones had.
    oldest = min(examined)
    whole = [e for m, e in examined.items() if m > oldest]
    rate = max(sum(whole) / max(len(whole), 1), 1.0)  # rows per minute
    missing = [m for m in minutes if m <= oldest]
    seconds = min(60.0, max(0.5, 60.0 * CHART_SAMPLED / (rate * len(missing))))
    window = timedelta(seconds=seconds)
    rows = conn.execute(sampled, {**params, "minutes": missing, "window": window}).fetchall()
    for m, n in rows:
        counts[m] = round(int(n) * 60.0 / seconds)
    return counts, set(missing) if seconds < 60.0 else set()


def chart(conn: Conn, queue: str, now: datetime, info: ServerInfo) -> list[Minute]:
    """Completed jobs and failed runs per minute over the last hour, oldest first (the
    last minute is the current one, so far)."""
    current = now.replace(second=0, microsecond=0)
    minutes = [current - timedelta(minutes=i) for i in range(CHART_MINUTES - 1, -1, -1)]
    done, done_guessed = _series(conn, _COMPLETED_EXACT, _COMPLETED_SAMPLED, queue, minutes, now)
    failed: dict[datetime, int] = {}
    failed_guessed: set[datetime] = set()
    if info.has_dashboard_indexes:
        failed, failed_guessed = _series(conn, _FAILED_EXACT, _FAILED_SAMPLED, queue, minutes, now)
    return [
        Minute(m, done.get(m, 0), failed.get(m, 0), m in done_guessed, m in failed_guessed)
        for m in minutes
    ]


# ---- the rest of a queue's overview ----------------------------------------------------


@attrs.frozen
class LeaderRow:
    holder: str
    term: int
    expires_at: datetime


@attrs.frozen
class CronRow:
    state: CronState
    next_run: datetime | None


@attrs.frozen
class LimitRow:
    job_type: str
    concurrency: int | None
    rate_count: int | None
    rate_per: float | None


@attrs.frozen
class QueueOverview:
    name: str
    counts: dict[JobStatus, Count]
    lag: float
    paused: bool
    leader: LeaderRow | None
    processes: list[ProcessInfo]
    cron: list[CronRow]
    limits: list[LimitRow]
    chart: list[Minute]

    @property
    def total(self) -> Count:
        return Count(
            sum(c.value for c in self.counts.values()),
            all(c.exact for c in self.counts.values()),
        )


def queue_overview(
    conn: Conn, queue: str, now: datetime, cap: int, info: ServerInfo
) -> QueueOverview:
    counts = queue_counts(conn, queue, cap, info)
    lag = lag_seconds(conn, queue, now)
    paused = False
    leader: LeaderRow | None = None
    cron: list[CronRow] = []
    limits: list[LimitRow] = []
    processes: list[ProcessInfo] = []
    if info.schema_version >= 9:
        row = conn.execute(q.IS_PAUSED, {"queue": queue}).fetchone()
        paused = bool(row and row[0])
        found = conn.execute(
            "SELECT holder, term, expires_at FROM kyu_leaders "
            "WHERE queue = %(queue)s AND expires_at > %(now)s",
            {"queue": queue, "now": now},
        ).fetchone()
        leader = LeaderRow(*found) if found else None
        for state_row in conn.execute(q.CRON_STATES, {"queue": queue}).fetchall():
            state = CronState(*state_row)
            cron.append(CronRow(state, state.next_run(now)))
        limits = [
            LimitRow(*r)
            for r in conn.execute(
                "SELECT job_type, concurrency, rate_count, rate_per FROM kyu_limits "
                "WHERE queue = %(queue)s ORDER BY job_type",
                {"queue": queue},
            ).fetchall()
        ]
    if info.has_processes:
        # The library's own read (`Queue.processes`), on the dashboard's connection.
        processes = [
            ProcessInfo(*r)
            for r in conn.execute(q.PROCESSES, {"queue": queue, "now": now}).fetchall()
        ]
    return QueueOverview(
        queue,
        counts,
        lag,
        paused,
        leader,
        processes,
        cron,
        limits,
        chart(conn, queue, now, info),
    )


def job_types(conn: Conn) -> list[str]:
    """The most common job types, from the planner's statistics (no scan): suggestions
    for the filter's job type field."""
    row = conn.execute(
        "SELECT most_common_vals::text FROM pg_stats "
        "WHERE tablename = 'kyu_jobs' AND attname = 'job_type' "
        "AND schemaname = current_schema()"
    ).fetchone()
    return sorted(_array_text(row[0])) if row and row[0] else []


# ---- the list --------------------------------------------------------------------------


@attrs.frozen
class ListRow:
    id: str
    queue: str
    job_type: str
    status: JobStatus
    priority: int
    created_at: datetime
    scheduled_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    locked_at: datetime | None
    attempt: int
    retry_count: int
    max_retries: int
    error: str | None
    #: The list's order key (the time column of its status, seq, or the id).
    key: datetime | int | str

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.key, self.id)


@attrs.frozen
class JobPage:
    rows: list[ListRow]
    #: The page after this one (older, in the list's order), if any.
    next_cursor: Cursor | None
    #: The page before it, if this is not the first.
    prev_cursor: Cursor | None
    #: The request stopped after examining ``scan_limit`` rows: the page may hold fewer
    #: rows than asked, and ``next_cursor`` continues the search from where it stopped.
    cut_short: bool = False
    #: The order key of the last row examined when cut short (how far it looked).
    reached: datetime | int | str | None = None


def _named(cls: type, values: Sequence[Any]) -> dict[str, Any]:
    """``values`` by the names of the first fields of the attrs class ``cls``."""
    names = [f.name for f in attrs.fields(cls)]
    return dict(zip(names, values, strict=False))


def _row(r: Sequence[Any]) -> ListRow:
    values = list(r[:15])
    values[0] = str(values[0])
    values[3] = JobStatus(values[3])
    if isinstance(values[14], UUID):  # the order key of a list by id
        values[14] = str(values[14])
    return ListRow(**_named(ListRow, values))


def _fetch(
    conn: Conn,
    flt: JobFilter,
    cursor: Cursor | None,
    newer: bool,
    limit: int,
    scan_limit: int,
    inclusive: bool = False,
) -> tuple[list[ListRow], ListRow | None]:
    """Up to ``limit`` matching rows, and the sentinel (the last row examined) when the
    scan stopped at ``scan_limit``."""
    query = list_query(
        flt, cursor=cursor, newer=newer, limit=limit, scan_limit=scan_limit, inclusive=inclusive
    )
    rows: list[ListRow] = []
    sentinel: ListRow | None = None
    for r in conn.execute(query.sql, query.params).fetchall():
        row = _row(r)
        matched, n = r[15], r[16]
        if n == scan_limit:
            sentinel = row
        if matched:
            rows.append(row)
    return rows, sentinel


def list_jobs(
    conn: Conn,
    flt: JobFilter,
    *,
    after: Cursor | None,
    before: Cursor | None,
    page_size: int,
    scan_limit: int,
) -> JobPage:
    """One page of the list: the first, the one after ``after`` or the one before
    ``before``."""
    if before is not None:
        rows, sentinel = _fetch(conn, flt, before, True, page_size + 1, scan_limit)
        more_before = len(rows) > page_size or sentinel is not None
        rows = list(reversed(rows[:page_size]))
        return JobPage(
            rows,
            next_cursor=rows[-1].cursor if rows else before,
            prev_cursor=rows[0].cursor if rows and more_before else None,
        )
    rows, sentinel = _fetch(conn, flt, after, False, page_size + 1, scan_limit)
    prev = rows[0].cursor if rows and after is not None else None
    if len(rows) > page_size:
        return JobPage(rows[:page_size], rows[page_size - 1].cursor, prev)
    if sentinel is not None:
        return JobPage(rows, sentinel.cursor, prev, cut_short=True, reached=sentinel.key)
    return JobPage(rows, None, prev)


def job_ids_batch(
    conn: Conn, flt: JobFilter, start: Cursor | None, inclusive: bool, size: int, scan_limit: int
) -> tuple[list[ListRow], Cursor | None]:
    """The next ``size`` matching jobs from ``start`` on, and where to go on from (None:
    the filter is exhausted). For bulk actions on a whole filter."""
    rows, sentinel = _fetch(conn, flt, start, False, size, scan_limit, inclusive)
    if len(rows) >= size:
        return rows, rows[-1].cursor
    if sentinel is not None:
        return rows, sentinel.cursor
    return rows, None


@attrs.frozen
class Matching:
    count: int
    #: False: counting stopped (at ``at_most`` matches, or after ``scan_limit`` rows).
    complete: bool
    #: The newest matching row: where a bulk action on the filter starts.
    first: Cursor | None


def count_matching(conn: Conn, flt: JobFilter, *, at_most: int, scan_limit: int) -> Matching:
    first_rows, _ = _fetch(conn, flt, None, False, 1, scan_limit)
    first = first_rows[0].cursor if first_rows else None
    if first is None:
        return Matching(0, True, None)
    query = count_query(flt, start=first, scan_limit=scan_limit, at_most=at_most)
    row = conn.execute(query.sql, query.params).fetchone()
    assert row is not None
    matched, examined = int(row[0]), int(row[1])
    return Matching(matched, matched < at_most and examined < scan_limit, first)


def queues_of(conn: Conn, ids: Sequence[str]) -> dict[str, str]:
    """The queue of each of ``ids`` that exists."""
    rows = conn.execute(
        "SELECT id::text, queue FROM kyu_jobs WHERE id = ANY(%s::uuid[])", (list(ids),)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


# ---- one job ---------------------------------------------------------------------------


@attrs.frozen
class AttemptRow:
    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str
    error: str | None
    traceback: str | None


@attrs.frozen
class JobDetail:
    id: str
    queue: str
    job_type: str
    status: JobStatus
    priority: int
    seq: int
    scheduled_at: datetime
    max_retries: int
    retry_count: int
    attempt: int
    error_message: str | None
    locked_by: str | None
    locked_at: datetime | None
    heartbeat_at: datetime | None
    completed_at: datetime | None
    job_timeout: float
    created_at: datetime
    updated_at: datetime
    unique_key: str | None
    payload_bytes: int
    #: The payload as stored (JSON text, its first `SHOWN_BYTES`); None unless shown.
    payload: str | None
    result: str | None
    result_bytes: int
    progress: str | None
    trace_context: str | None
    attempts: list[AttemptRow]


_JOB = f"""
SELECT id::text, queue, job_type, status, priority, seq, scheduled_at, max_retries,
       retry_count, attempt, error_message, locked_by, locked_at, heartbeat_at,
       completed_at, job_timeout, created_at, updated_at, unique_key,
       octet_length(payload),
       CASE WHEN %(show)s THEN left(payload, {SHOWN_BYTES}) END,
       left(result::text, {SHOWN_BYTES}), coalesce(octet_length(result::text), 0),
       left(progress::text, {SHOWN_BYTES}), trace_context
FROM kyu_jobs WHERE id = %(id)s::uuid
"""
_ATTEMPTS = f"""
SELECT attempt, worker_id, started_at, finished_at, outcome, error, traceback
FROM kyu_attempts WHERE job_id = %(id)s::uuid
ORDER BY attempt DESC LIMIT {SHOWN_ATTEMPTS}
"""


def job_detail(conn: Conn, job_id: str, show_payload: bool) -> JobDetail | None:
    row = conn.execute(_JOB, {"id": job_id, "show": show_payload}).fetchone()
    if row is None:
        return None
    attempts = [AttemptRow(*r) for r in conn.execute(_ATTEMPTS, {"id": job_id}).fetchall()]
    values = list(row)
    values[3] = JobStatus(values[3])
    detail = JobDetail(**_named(JobDetail, values), attempts=[])
    if detail.status is JobStatus.COMPLETED and not any(
        a.attempt == detail.attempt for a in attempts
    ):
        # A completed run is the row itself (never written to kyu_attempts).
        attempts.insert(
            0,
            AttemptRow(
                detail.attempt, detail.locked_by, detail.locked_at, detail.completed_at,
                "completed", None, None,
            ),
        )  # fmt: skip
    attempts.sort(key=lambda a: a.attempt)
    return attrs.evolve(detail, attempts=attempts)


def pretty_json(text: str | None) -> str | None:
    """JSON text indented for reading; as it is when it is not JSON (or was cut)."""
    if text is None:
        return None
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=False)
    except ValueError:
        return text


def utc_now() -> datetime:
    return datetime.now(UTC)
