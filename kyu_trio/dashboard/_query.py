"""The job list's query: which index answers each filter, in which order, and the SQL.

Every list is newest first by a time column that an index of ``kyu_jobs`` holds for the
status asked (the time the job entered that status, where there is one), paged by
keyset on (that column, id), never by OFFSET:

=============  ==========================  =====================  =====================
status         index (migrations 001-007)  order (and time range)  shown as
=============  ==========================  =====================  =====================
(any)          kyu_jobs_created_idx        created_at              created
pending        kyu_jobs_pending_idx        seq (ready order)       queued
scheduled      kyu_jobs_due_idx            scheduled_at            due
failed         kyu_jobs_failed_idx (013)   updated_at              failed
running        kyu_jobs_running_idx        locked_at (sorted)      started
completed      kyu_jobs_completed_idx      completed_at            completed
dead           kyu_jobs_dead_idx           updated_at              died
cancelled      kyu_jobs_cancelled_idx      updated_at              cancelled
id / prefix    the primary key             id (UUIDv7: creation)   created
=============  ==========================  =====================  =====================

The index condition (queue, status, the range of the order column, the cursor) is
exact. What no index holds (a job type, a time range on created_at for pending jobs or
an id prefix, the queue and status when paging by id, scheduled among failed) is a
*residual* filter, checked on the rows the index yields, newest first; so that a rare
job type can never make a request read the whole table, one request examines at most
``scan_limit`` rows and, when it stops there, returns the position it reached (the row
numbered ``scan_limit``, as a sentinel) for the page to say how far it looked and to
link to the rest.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from .._job import JobStatus

# Columns of a list row, in order (`_reads.ListRow`).
ROW_COLUMNS = (
    "id, queue, job_type, status, priority, created_at, scheduled_at, updated_at, "
    "completed_at, locked_at, attempt, retry_count, max_retries, "
    "left(error_message, 300) AS error"
)
_ROW_NAMES = (
    "id, queue, job_type, status, priority, created_at, scheduled_at, updated_at, "
    "completed_at, locked_at, attempt, retry_count, max_retries, error"
)


@attrs.frozen
class Plan:
    """How one status is listed: its index's order column and the condition that lets
    the planner use that (partial) index; ``residual_status`` when the index holds
    other statuses too."""

    key: str
    label: str
    predicate: str
    residual_status: str | None = None
    #: The index yields the queue's rows of the status in no useful order: sort them
    #: (running jobs: as many as the fleet's workers, never the table).
    sorted_here: bool = False

    @property
    def key_is_time(self) -> bool:
        return self.key not in ("seq", "id")


PLANS: dict[JobStatus | None, Plan] = {
    None: Plan("created_at", "created", "true"),
    JobStatus.PENDING: Plan("seq", "queued", "status = 'pending'"),
    JobStatus.SCHEDULED: Plan(
        "scheduled_at", "due", "status IN ('scheduled', 'failed')", "scheduled"
    ),
    JobStatus.FAILED: Plan("updated_at", "failed", "status = 'failed'"),
    JobStatus.RUNNING: Plan("locked_at", "started", "status = 'running'", sorted_here=True),
    JobStatus.COMPLETED: Plan("completed_at", "completed", "status = 'completed'"),
    JobStatus.DEAD: Plan("updated_at", "died", "status = 'dead'"),
    JobStatus.CANCELLED: Plan("updated_at", "cancelled", "status = 'cancelled'"),
}
BY_ID = Plan("id", "created", "true")

#: What the time range of a list filters on, by status (for the filter form's label).
TIME_LABELS = {
    (s.value if s else ""): ("created" if p.key in ("seq", "id") else p.label)
    for s, p in PLANS.items()
}

_HEX = re.compile(r"[0-9a-f]*")


def id_range(text: str) -> tuple[str, str] | None:
    """The (lowest, highest) ids that start with ``text`` (a whole id, or a prefix of
    its hex digits, dashes optional); None if it is not one."""
    digits = text.strip().lower().replace("-", "")
    if not digits or len(digits) > 32 or not _HEX.fullmatch(digits):
        return None
    low = str(uuid.UUID(digits.ljust(32, "0")))
    high = str(uuid.UUID(digits.ljust(32, "f")))
    return low, high


@attrs.frozen
class JobFilter:
    """What a list shows: the queues searched, and the optional filters."""

    queues: tuple[str, ...]
    status: JobStatus | None = None
    job_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: The id prefix as typed, and the range of ids it covers.
    id_prefix: str | None = None
    id_low: str | None = None
    id_high: str | None = None
    oldest_first: bool = False

    @property
    def plan(self) -> Plan:
        return BY_ID if self.id_low is not None else PLANS[self.status]

    def residuals(self) -> list[str]:
        """The conditions the index does not answer (SQL over the row's columns)."""
        plan = self.plan
        found: list[str] = []
        if plan is BY_ID:
            found.append("queue = ANY(%(queues)s::text[])")
            if self.status is not None:
                found.append(f"status = '{self.status.value}'")
        elif plan.residual_status is not None:
            found.append(f"status = '{plan.residual_status}'")
        if self.job_type is not None:
            found.append("job_type = %(job_type)s")
        if not plan.key_is_time:
            if self.since is not None:
                found.append("created_at >= %(since)s")
            if self.until is not None:
                found.append("created_at < %(until)s")
        return found

    @property
    def exact(self) -> bool:
        """Whether the index answers the whole filter (nothing residual)."""
        return not self.residuals()


@attrs.frozen
class Cursor:
    """A position in a list: the order column's value and the id of a row."""

    key: datetime | int | str
    id: str

    def encode(self) -> str:
        if isinstance(self.key, datetime):
            head = f"t{(self.key - _EPOCH) // _MICROSECOND}"
        elif isinstance(self.key, int):
            head = f"s{self.key}"
        else:
            head = "i"
        return base64.urlsafe_b64encode(f"{head}.{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, plan: Plan) -> Cursor | None:
        """The cursor ``encode`` made for a list of ``plan``; None if ``text`` is not one."""
        if len(text) > 120:
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            head, _, ident = raw.partition(".")
            job_id = str(uuid.UUID(ident))
            kind, value = head[:1], head[1:]
            if kind == "t" and plan.key_is_time:
                return cls(_EPOCH + int(value) * _MICROSECOND, job_id)
            if kind == "s" and plan.key == "seq":
                return cls(int(value), job_id)
        except (ValueError, UnicodeDecodeError, OverflowError):
            return None
        if kind == "i" and plan.key == "id" and not value:
            return cls(job_id, job_id)
        return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@attrs.frozen
class ListQuery:
    sql: str
    params: dict[str, Any]


def _examined(
    flt: JobFilter, cursor: Cursor | None, descending: bool, inclusive: bool
) -> tuple[str, dict[str, Any]]:
    """The rows one request examines, in list order (at most ``%(scan)s``), with their
    ``matched`` (the residual filter) and ``n`` (rank among the examined) columns."""
    plan = flt.plan
    d = "DESC" if descending else "ASC"
    less = "<" if descending else ">"
    params: dict[str, Any] = {
        "queues": list(flt.queues),
        "job_type": flt.job_type,
        "since": flt.since,
        "until": flt.until,
    }
    key = plan.key
    conditions = [plan.predicate]
    if plan is BY_ID:
        params["id_low"], params["id_high"] = flt.id_low, flt.id_high
        conditions.append("id BETWEEN %(id_low)s::uuid AND %(id_high)s::uuid")
    elif plan.key_is_time:
        if flt.since is not None:
            conditions.append(f"{key} >= %(since)s")
        if flt.until is not None:
            conditions.append(f"{key} < %(until)s")
    if cursor is not None:
        params["ck"], params["cid"] = cursor.key, cursor.id
        tie = f"{less}=" if inclusive else less
        if plan is BY_ID:
            conditions.append(f"id {tie} %(cid)s::uuid")
        else:
            # The first half is the index condition; the second drops the rows of equal
            # key on the wrong side of the cursor's id (ties: a batch enqueued at once).
            conditions.append(f"{key} {less}= %(ck)s")
            conditions.append(f"({key} {less} %(ck)s OR id {tie} %(cid)s::uuid)")
    where = " AND ".join(conditions)
    if plan is BY_ID:
        branches = [
            f"(SELECT {ROW_COLUMNS}, id AS k FROM kyu_jobs WHERE {where} "
            f"ORDER BY id {d} LIMIT %(scan)s)"
        ]
    else:
        branches = []
        for i, queue in enumerate(flt.queues):
            params[f"q{i}"] = queue
            branches.append(
                f"(SELECT {ROW_COLUMNS}, {key} AS k FROM kyu_jobs "
                f"WHERE queue = %(q{i})s AND {where} "
                f"ORDER BY {key} {d}, id {d} LIMIT %(scan)s)"
            )
    union = " UNION ALL ".join(branches)
    residual = " AND ".join(flt.residuals()) or "true"
    # row_number() over rows that already come in this order costs no sort.
    sql = f"""
    SELECT e.*, ({residual}) AS matched, row_number() OVER (ORDER BY k {d}, id {d}) AS n
    FROM (SELECT * FROM ({union}) AS u ORDER BY k {d}, id {d} LIMIT %(scan)s) AS e"""
    return sql, params


def list_query(
    flt: JobFilter,
    *,
    cursor: Cursor | None,
    newer: bool = False,
    limit: int,
    scan_limit: int,
    inclusive: bool = False,
) -> ListQuery:
    """The query of one page: rows after ``cursor`` (before it with ``newer``: the
    previous page, in reverse), ``limit`` matching rows at most, ``scan_limit`` rows
    examined at most. Its rows are `ROW_COLUMNS`, then the order key ``k``, ``matched``
    and ``n``; the last row examined comes too (matching or not) when the scan stopped
    at ``scan_limit``. ``inclusive``: the cursor's own row may be in the page (the start
    of a bulk action's snapshot)."""
    descending = (not flt.oldest_first) != newer
    d = "DESC" if descending else "ASC"
    examined, params = _examined(flt, cursor, descending, inclusive)
    params.update(limit=limit, scan=scan_limit)
    # The outer query keeps the order and stops as soon as it has ``limit`` rows, so an
    # exact filter reads one page of the index and no more.
    sql = f"""
SELECT {_ROW_NAMES}, k, matched, n FROM ({examined}
) AS s
WHERE matched OR n = %(scan)s
ORDER BY k {d}, id {d}
LIMIT %(limit)s
"""
    return ListQuery(sql, params)


def count_query(
    flt: JobFilter, *, start: Cursor | None, scan_limit: int, at_most: int
) -> ListQuery:
    """How many rows match ``flt`` from ``start`` (inclusive) on: one row, (matching
    rows counted, at most ``at_most``; rank of the last row examined, at most
    ``scan_limit``)."""
    descending = not flt.oldest_first
    examined, params = _examined(flt, start, descending, True)
    params.update(at_most=at_most, scan=scan_limit)
    sql = f"""
SELECT count(*) FILTER (WHERE matched), coalesce(max(n), 0) FROM (
    SELECT matched, n FROM ({examined}
    ) AS s
    WHERE matched OR n = %(scan)s
    LIMIT %(at_most)s
) AS c
"""
    return ListQuery(sql, params)
