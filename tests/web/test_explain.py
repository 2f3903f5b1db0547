"""Every query shape of the dashboard reads through an index: EXPLAIN on 36,000 ANALYZEd
rows, with sequential scans and sorts disabled so that the planner shows the path it
would take on a large table (where both cost far more than a page of an index; on a
small one a sort of a few thousand rows may well be cheaper, and fine), must show the
index meant for it, no sequential scan of kyu_jobs or kyu_attempts, and no Sort of rows
read from kyu_jobs: a Sort that no index order can spare still shows with sorts
disabled. An Incremental Sort, which only orders rows of equal time by id, is fine;
running jobs are sorted, as few as the fleet's workers. Timings are bench/dashboard.py's
business, not this test's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from kyu_trio import JobStatus
from kyu_trio._store import _queries as q
from kyu_trio._store._postgres import migrate
from kyu_trio.dashboard import _reads as reads
from kyu_trio.dashboard._query import Cursor, JobFilter, count_query, id_range, list_query

pytestmark = pytest.mark.integration

SEED = """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, scheduled_at, max_retries,
                      job_timeout, created_at, updated_at, completed_at, locked_at,
                      heartbeat_at, attempt)
SELECT md5(%(queues)s::text || g)::uuid,
       (%(queues)s::text[])[1 + g %% 2], 'type' || (g %% 7), '1', st,
       CASE WHEN st = 'scheduled' THEN %(now)s + g * interval '1 second' ELSE created END,
       3, 30, created, created + interval '1 second',
       CASE WHEN st = 'completed' THEN created + interval '1 second' END,
       CASE WHEN st IN ('running', 'completed') THEN created END,
       CASE WHEN st = 'running' THEN %(now)s END, 1
FROM (
    SELECT g, %(now)s - g * interval '2 seconds' AS created,
           (ARRAY['completed', 'completed', 'completed', 'dead', 'failed', 'pending',
                  'scheduled', 'cancelled', 'running'])[1 + g %% 9] AS st
    FROM generate_series(1, 36000) AS g
) AS s
"""
SEED_ATTEMPTS = """
INSERT INTO kyu_attempts (job_id, attempt, finished_at, outcome, error)
SELECT id, 1, updated_at, 'failed', 'boom' FROM kyu_jobs
WHERE queue = ANY(%(queues)s) AND status IN ('dead', 'failed')
"""


@pytest.fixture(scope="module")
def seeded(pg_dsn: str) -> Iterator[tuple[psycopg.Connection[Any], list[str]]]:
    """Two queues of 18,000 jobs each (2,000 of every status), ANALYZEd; a connection that
    will not choose a sequential scan while another path exists."""
    name = f"kyu:test-explain-{uuid.uuid4().hex[:8]}"
    queues = [name, name + "-b"]
    now = datetime.now(UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
        conn.execute(SEED, {"queues": queues, "now": now})
        conn.execute(SEED_ATTEMPTS, {"queues": queues})
        conn.execute("ANALYZE kyu_jobs")
        conn.execute("ANALYZE kyu_attempts")
        # What the planner does on a large table, where a sequential scan or a sort of
        # the filter's rows would cost far more than a page of an index: if an index
        # path exists, it is chosen; if not, the Seq Scan or Sort still shows.
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_sort = off")
        yield conn, queues
        conn.execute("DELETE FROM kyu_jobs WHERE queue = ANY(%s)", (queues,))


def plan_of(conn: psycopg.Connection[Any], sql: str, params: Any) -> dict[str, Any]:
    row = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def check(plan: dict[str, Any], indexes: set[str], *, sort_over: str | None = None) -> None:
    """The plan reads through ``indexes`` (each at least once), never scans a table
    sequentially, and sorts no rows of kyu_jobs (but those read by ``sort_over``)."""
    used: set[str] = set()
    for node in nodes(plan):
        kind = node["Node Type"]
        assert kind != "Seq Scan", f"a sequential scan of {node.get('Relation Name')}: {plan}"
        if "Index Name" in node:
            used.add(node["Index Name"])
        if kind == "Sort":
            # A Sort whose rows come from kyu_jobs through any index but ``sort_over``.
            read = {n["Index Name"] for n in nodes(node) if "Index Name" in n}
            assert read <= {sort_over}, f"a Sort over rows read through {read}: {plan}"
    assert indexes <= used, (indexes, used, plan)


SCAN = 500

INDEX = {
    None: "kyu_jobs_created_idx",
    JobStatus.PENDING: "kyu_jobs_pending_idx",
    JobStatus.SCHEDULED: "kyu_jobs_due_idx",
    JobStatus.FAILED: "kyu_jobs_failed_idx",
    JobStatus.RUNNING: "kyu_jobs_running_idx",
    JobStatus.COMPLETED: "kyu_jobs_completed_idx",
    JobStatus.DEAD: "kyu_jobs_dead_idx",
    JobStatus.CANCELLED: "kyu_jobs_cancelled_idx",
}


@pytest.mark.parametrize("status", list(INDEX), ids=lambda s: s.value if s else "any")
@pytest.mark.parametrize(
    "variant", ["plain", "type", "time", "cursor", "oldest", "newer", "two-queues", "count"]
)
def test_list_queries_use_their_index(
    seeded: tuple[psycopg.Connection[Any], list[str]], status: JobStatus | None, variant: str
) -> None:
    conn, queues = seeded
    now = datetime.now(UTC)
    # Most of the rows, as a time range on a large table holds more than one request
    # examines (scheduled jobs are due in the future).
    ahead = timedelta(hours=1 if status is JobStatus.SCHEDULED else -18)
    flt = JobFilter(
        tuple(queues) if variant == "two-queues" else (queues[0],),
        status,
        job_type="type3" if variant == "type" else None,
        since=now + ahead if variant == "time" else None,
        until=now + ahead + timedelta(hours=17) if variant == "time" else None,
        oldest_first=variant == "oldest",
    )
    # A cursor in the middle of the rows of the filter, as a "next page" link has.
    plan = flt.plan
    middle = conn.execute(
        f"SELECT {plan.key}, id::text FROM kyu_jobs WHERE queue = %s AND {plan.predicate} "
        f"ORDER BY {plan.key} OFFSET 1000 LIMIT 1",
        (queues[0],),
    ).fetchone()
    assert middle is not None
    cursor = Cursor(middle[0], middle[1])
    if variant == "count":
        query = count_query(flt, start=cursor, scan_limit=SCAN, at_most=100_001)
    else:
        query = list_query(
            flt,
            cursor=cursor if variant in ("cursor", "newer") else None,
            newer=variant == "newer",
            limit=51,
            scan_limit=SCAN,
        )
    sort_over = INDEX[status] if status is JobStatus.RUNNING else None
    check(plan_of(conn, query.sql, query.params), {INDEX[status]}, sort_over=sort_over)


@pytest.mark.parametrize("status", [None, JobStatus.DEAD])
def test_id_prefix_uses_the_primary_key(
    seeded: tuple[psycopg.Connection[Any], list[str]], status: JobStatus | None
) -> None:
    conn, queues = seeded
    found = id_range("4")  # a sixteenth of the ids: more than one request examines
    assert found is not None
    flt = JobFilter(tuple(queues), status, id_prefix="4", id_low=found[0], id_high=found[1])
    query = list_query(flt, cursor=None, limit=51, scan_limit=SCAN)
    check(plan_of(conn, query.sql, query.params), {"kyu_jobs_pkey"})


def test_overview_queries_use_indexes(seeded: tuple[psycopg.Connection[Any], list[str]]) -> None:
    conn, queues = seeded
    now = datetime.now(UTC)
    params = {"queue": queues[0], "cap": SCAN}
    check(
        plan_of(conn, reads.COUNTS, params),
        {
            "kyu_jobs_pending_idx",
            "kyu_jobs_running_idx",
            "kyu_jobs_completed_idx",
            "kyu_jobs_dead_idx",
            "kyu_jobs_cancelled_idx",
            "kyu_jobs_failed_idx",
            "kyu_jobs_due_idx",
        },
    )
    # A busy hour: more completions and failures than the chart counts exactly.
    since = now - timedelta(hours=18)
    minutes = [since + timedelta(minutes=i) for i in range(3)]
    window = {"window": timedelta(seconds=10), "minutes": minutes}
    span = {"queue": queues[0], "since": since, "until": now, "cap": SCAN}
    check(plan_of(conn, reads._COMPLETED_EXACT, span), {"kyu_jobs_completed_idx"})
    check(plan_of(conn, reads._COMPLETED_SAMPLED, {**span, **window}), {"kyu_jobs_completed_idx"})
    check(
        plan_of(conn, reads._FAILED_EXACT, span),
        {"kyu_attempts_finished_idx", "kyu_jobs_pkey"},
    )
    check(
        plan_of(conn, reads._FAILED_SAMPLED, {**span, **window}),
        {"kyu_attempts_finished_idx"},
    )
    check(
        plan_of(conn, q.OLDEST_DUE, {"queue": queues[0], "now": now}),
        {"kyu_jobs_pending_idx", "kyu_jobs_due_idx"},
    )
    job_id = "01a21566-1748-7265-9d52-ec518675d7e1"
    check(plan_of(conn, reads._JOB, {"id": job_id, "show": False}), {"kyu_jobs_pkey"})
    check(plan_of(conn, reads._ATTEMPTS, {"id": job_id}), {"kyu_attempts_pkey"})


def test_the_overview_reads_answer(seeded: tuple[psycopg.Connection[Any], list[str]]) -> None:
    """The same reads, run: what the EXPLAINs above planned, answered."""
    conn, queues = seeded
    info = reads.server_info(conn)
    overview = reads.queue_overview(conn, queues[0], datetime.now(UTC), 10_000, info)
    assert overview.counts[JobStatus.DEAD] == reads.Count(2000, True)
    assert overview.counts[JobStatus.SCHEDULED] == reads.Count(2000, True)
    assert sum(m.failed for m in overview.chart) > 0
    assert sum(m.completed for m in overview.chart) > 0
