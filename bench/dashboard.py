"""The web dashboard on a large table (issue 15): with 5,000,000 jobs in ``kyu_jobs``, the
overview, the first page of every filter and pages deep into a big filter must each
answer in under 200 ms.

    .venv/bin/python -m bench.dashboard                 # seed 5M jobs, measure, drop the database
    .venv/bin/python -m bench.dashboard --keep          # ...and keep the seeded database
    .venv/bin/python -m bench.dashboard --reuse         # measure a database kept earlier

It seeds a scratch database (``kyu_bench_dashboard``, created next to KYU_DSN's, or the
default test server's) with ``--jobs`` jobs in one ``INSERT ... SELECT`` over
``generate_series``: two queues (85 % / 15 %), created over the last three days in id
order (UUIDv7 ids made from ``created_at``, as the library makes them), 40 job types with
a skewed (log-uniform) distribution plus a rare one (1 in 100,000), and a realistic mix
of statuses: mostly completed; dead, cancelled and scheduled jobs spread over the three
days; a pending backlog and some running jobs in the last minutes; failed ones in the
last three hours; dead and failed jobs with their attempts (errors and tracebacks). It
then runs ``VACUUM ANALYZE`` and, as workers would have done since that VACUUM, rewrites
the last hour's rows once (so the recent part of the table, which the overview's chart
counts, is not all-visible: the index-only scans have to visit the heap, as in a busy
database whose autovacuum is behind).

The dashboard runs as it ships: ``kyu-trio dashboard`` in a subprocess (Hypercorn on
trio) on a free port of 127.0.0.1, and each URL is requested ``--requests`` times over
HTTP (after one warm-up request): the overview (the page and its live-update fragment),
the first page of every filter combination the list offers (queue x status x job type x
time range, and id prefixes), and pages 1, 10, 100 and 1000 of a big filter (following
the "older" links). Results: median and max per URL, and whether each is under 200 ms,
in bench/results/dashboard.{md,json}.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ._common import DSN, REDIS_URL, ROOT, machine, write_results

DATABASE = "kyu_bench_dashboard"
QUEUES = ("kyu:dash-default", "kyu:dash-mail")
TARGET_MS = 200.0
SPAN = timedelta(days=3)

# 40 job types: a log-uniform draw over their index makes the first ones the most common
# (send_email about 27 %, the last about 0.7 %), as in real queues.
JOB_TYPES = [
    "send_email", "resize_image", "sync_account", "charge_card", "render_pdf",
    "index_document", "send_sms", "refresh_token", "import_csv", "export_report",
    "notify_slack", "geocode_address", "transcode_video", "score_lead", "update_search",
    "expire_sessions", "rebuild_cache", "webhook_delivery", "compute_invoice", "sync_crm",
    "fetch_feed", "thumbnail", "detect_fraud", "archive_order", "warm_cdn",
    "recalculate_stats", "send_push", "cleanup_uploads", "backfill_metrics", "audit_login",
    "translate_text", "ocr_scan", "reconcile_ledger", "check_inventory", "ship_order",
    "rotate_keys", "merge_duplicates", "tag_photos", "train_model", "nightly_digest",
]  # fmt: skip
RARE_TYPE = "rare_audit"


def _dsn(dbname: str) -> str:
    params = conninfo_to_dict(DSN)
    params["dbname"] = dbname
    return make_conninfo(**{k: str(v) for k, v in params.items()})


# ---- seeding --------------------------------------------------------------------------

# One INSERT ... SELECT for rows lo..hi of ``total``, in creation order. ``r`` draws the
# status; the time-dependent ones (pending backlog, running, failed) only near the end.
SEED_JOBS = """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, priority, scheduled_at,
                      max_retries, retry_count, attempt, error_message, locked_by, locked_at,
                      heartbeat_at, completed_at, job_timeout, created_at, updated_at)
SELECT
    (lpad(to_hex((extract(epoch FROM created_at) * 1000)::bigint), 12, '0') || '7'
     || substr(md5(g::text || r::text), 1, 3) || '8'
     || substr(md5(r::text || g::text), 1, 15))::uuid,
    queue, job_type, '{"n": ' || g || '}', status, 0,
    CASE status WHEN 'scheduled' THEN %(now)s + r * interval '2 days'
                WHEN 'failed' THEN %(now)s + r * interval '30 minutes'
                ELSE created_at END,
    3,
    CASE status WHEN 'dead' THEN 3 WHEN 'failed' THEN 1 ELSE 0 END,
    CASE status WHEN 'dead' THEN 4 WHEN 'failed' THEN 1 WHEN 'completed' THEN 1
                WHEN 'running' THEN 1 ELSE 0 END,
    CASE WHEN status IN ('dead', 'failed')
         THEN 'TimeoutError: upstream did not answer within 30 s' END,
    CASE WHEN status IN ('completed', 'running') THEN 'bench-host:4242:abcd' END,
    CASE WHEN status IN ('completed', 'running') THEN created_at END,
    CASE WHEN status = 'running' THEN %(now)s END,
    CASE WHEN status = 'completed' THEN created_at + r * interval '5 seconds' END,
    30, created_at,
    CASE status WHEN 'completed' THEN created_at + r * interval '5 seconds'
                WHEN 'dead' THEN created_at + interval '7 minutes'
                WHEN 'cancelled' THEN created_at + r * interval '10 minutes'
                WHEN 'failed' THEN created_at + interval '1 minute'
                ELSE created_at END
FROM (
    SELECT g, r, created_at,
        CASE WHEN random() < 0.85 THEN %(q0)s ELSE %(q1)s END AS queue,
        CASE WHEN random() < 0.00001 THEN %(rare)s
             ELSE (%(types)s::text[])[least(40, floor(exp(random() * ln(41)))::int)] END
            AS job_type,
        CASE WHEN created_at > %(now)s - interval '2 minutes' AND r < 0.05 THEN 'running'
             WHEN created_at > %(now)s - interval '30 minutes' AND r < 0.7 THEN 'pending'
             WHEN r < 0.015 THEN 'scheduled'
             WHEN r < 0.030 THEN 'dead'
             WHEN r < 0.045 THEN 'cancelled'
             WHEN r < 0.048 AND created_at > %(now)s - interval '3 hours' THEN 'failed'
             ELSE 'completed' END AS status
    FROM (
        SELECT g, random() AS r,
               %(start)s + (g::float8 / %(total)s) * %(span)s * interval '1 second'
               + random() * interval '10 milliseconds' AS created_at
        FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
    ) AS t
) AS s
"""

# The attempts of dead (4 runs) and failed (1 run) jobs, with errors and tracebacks.
SEED_ATTEMPTS = """
INSERT INTO kyu_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome,
                          error, traceback)
SELECT j.id, a, 'bench-host:4242:abcd', j.created_at + (a - 1) * interval '2 minutes',
       j.created_at + (a - 1) * interval '2 minutes' + interval '30 seconds',
       CASE WHEN j.status = 'dead' AND a = 4 THEN 'dead' ELSE 'failed' END,
       'TimeoutError: upstream did not answer within 30 s',
       'Traceback (most recent call last):' || chr(10)
       || '  File "app/tasks.py", line 42, in ' || j.job_type || chr(10)
       || '    await upstream.call(payload)' || chr(10)
       || 'TimeoutError: upstream did not answer within 30 s'
FROM kyu_jobs j, generate_series(1, CASE WHEN j.status = 'dead' THEN 4 ELSE 1 END) AS a
WHERE j.status IN ('dead', 'failed')
"""

# What workers did since the VACUUM: the last hour's rows written once more.
TOUCH_RECENT = """
UPDATE kyu_jobs SET updated_at = updated_at
WHERE created_at > %(now)s - interval '1 hour'
"""


def seed(dsn: str, total: int) -> dict[str, Any]:
    from kyu_trio._store._postgres import migrate

    now = datetime.now(UTC)
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        conn.execute("CREATE TABLE bench_seed (jobs bigint, seeded_at timestamptz)")
        chunk = 500_000
        for lo in range(1, total + 1, chunk):
            hi = min(total, lo + chunk - 1)
            conn.execute(
                SEED_JOBS,
                {
                    "lo": lo,
                    "hi": hi,
                    "total": total,
                    "now": now,
                    "start": now - SPAN,
                    "span": SPAN.total_seconds(),
                    "q0": QUEUES[0],
                    "q1": QUEUES[1],
                    "types": JOB_TYPES,
                    "rare": RARE_TYPE,
                },
            )
            print(f"  {hi:,} jobs ({time.perf_counter() - started:.0f} s)", flush=True)
        conn.execute(SEED_ATTEMPTS)
        conn.execute("VACUUM ANALYZE kyu_jobs")
        conn.execute("VACUUM ANALYZE kyu_attempts")
        touched = conn.execute(TOUCH_RECENT, {"now": now}).rowcount
        conn.execute("INSERT INTO bench_seed VALUES (%s, %s)", (total, now))
        # The seeded gigabytes written out now, not during the measurements.
        conn.execute("CHECKPOINT")
    return {"seconds": time.perf_counter() - started, "touched_last_hour": touched}


def seeded(dsn: str) -> tuple[int, datetime] | None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT jobs, seeded_at FROM bench_seed").fetchone()
    except psycopg.Error:
        return None
    return (int(row[0]), row[1]) if row else None


def create_database() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')


def drop_database() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


# ---- the dashboard over HTTP -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def start_dashboard(dsn: str) -> tuple[str, subprocess.Popen[str]]:
    port = free_port()
    argv = [sys.executable, "-m", "kyu_trio", "dashboard", "--port", str(port), "--refresh", "0"]
    for queue in QUEUES:
        argv += ["--queue", queue]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "KYU_DSN": dsn, "KYU_REDIS_URL": REDIS_URL},
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"kyu-trio dashboard exited: {proc.communicate()[1]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"http://127.0.0.1:{port}", proc
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("kyu-trio dashboard did not start listening") from None
            time.sleep(0.1)


def timed(client: httpx.Client, url: str, requests: int) -> dict[str, Any]:
    """One warm-up request, then ``requests`` timed ones: milliseconds, median and max."""
    first = client.get(url)
    if first.status_code not in (200, 303):
        raise RuntimeError(f"{url}: HTTP {first.status_code}: {first.text[:300]}")
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status() if response.status_code != 303 else None
    text = first.text
    return {
        "url": url,
        "median_ms": statistics.median(times),
        "max_ms": max(times),
        "rows": text.count('data-testid="job-row"'),
        "cut_short": 'data-testid="cut-short"' in text,
    }


def filter_urls(seeded_at: datetime) -> list[str]:
    """The first page of every filter combination the list offers."""
    day_ago = seeded_at - timedelta(days=1)
    times = {
        "": {},
        "last 1h": {"last": "1h"},
        "last 24h": {"last": "24h"},
        "a day-old hour": {
            "from": (day_ago - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
            "to": day_ago.strftime("%Y-%m-%dT%H:%M"),
        },
    }
    urls = []
    for queue in ("", *QUEUES):
        for status in (
            "",
            "pending",
            "scheduled",
            "running",
            "failed",
            "completed",
            "dead",
            "cancelled",
        ):
            for job_type in ("", "send_email", JOB_TYPES[-1], RARE_TYPE):
                for when in times.values():
                    params = {"queue": queue, "status": status, "type": job_type, **when}
                    query = urlencode({k: v for k, v in params.items() if v})
                    urls.append("/jobs" + (f"?{query}" if query else ""))
    return urls


def id_urls(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT id::text FROM kyu_jobs WHERE status = 'dead' "
            "ORDER BY id DESC OFFSET 1000 LIMIT 1"
        ).fetchone()
    assert row is not None
    job_id = row[0]
    return [
        f"/jobs?id={job_id[:4]}",
        f"/jobs?id={job_id[:8]}",
        f"/jobs?id={job_id[:13]}",
        f"/jobs?id={job_id[:8]}&status=dead",
        f"/jobs?id={job_id}",  # a whole id: a redirect to its page
        f"/jobs/{job_id}",  # its page
    ]


def deep_pages(client: httpx.Client, start: str, pages: tuple[int, ...]) -> dict[int, str]:
    """The URLs of pages ``pages`` of a list, found by following its "older" links."""
    found: dict[int, str] = {}
    url, n = start, 1
    while n <= max(pages):
        if n in pages:
            found[n] = url
        text = client.get(url).text
        link = re.search(r'href="([^"]+)" data-testid="page-older"', text)
        if link is None:
            break
        url = link.group(1).replace("&amp;", "&")
        n += 1
    return found


def measure(dsn: str, seeded_at: datetime, requests: int) -> list[dict[str, Any]]:
    base, proc = start_dashboard(dsn)
    rows: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=base, timeout=30) as client:

            def add(group: str, url: str, label: str = "") -> None:
                row = timed(client, url, requests)
                row.update(group=group, label=label or url)
                rows.append(row)
                print(
                    f"  {group:12s} {row['median_ms']:7.1f} ms median {row['max_ms']:7.1f} max"
                    f"  {row['label']}",
                    flush=True,
                )

            add("overview", "/")
            add("overview", "/live/overview", "the live update's fragment")
            for url in filter_urls(seeded_at):
                add("first page", url)
            for url in id_urls(dsn):
                add("id", url)
            for start in ("/jobs", f"/jobs?queue={QUEUES[0]}&status=completed"):
                for n, url in deep_pages(client, start, (1, 10, 100, 1000)).items():
                    add("deep paging", url, f"page {n} of {start}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


# ---- what migration 013's indexes cost the workers -------------------------------------

INDEX_DATABASES = {"without": "kyu_bench_idx_without", "with": "kyu_bench_idx_with"}
DROP_013 = "DROP INDEX kyu_attempts_finished_idx; DROP INDEX kyu_jobs_failed_idx"


def fail_worker(queue_name: str, workers: int) -> None:
    """A worker process whose every job raises (``python -m bench.dashboard QUEUE N
    --fail-worker``): the failure path, which writes runs to kyu_attempts."""
    import logging

    import trio

    from kyu_trio import Config, Queue

    logging.getLogger("kyu_trio").setLevel(logging.CRITICAL)  # no traceback per job
    queue = Queue(
        Config.from_env(
            queue_name=queue_name,
            workers=workers,
            metrics_port=0,
            shutdown_grace=1.0,
            pool_size=4,
            scheduler_interval=0.2,
        )
    )

    @queue.handler("fail")
    async def fail(payload: str) -> None:
        raise RuntimeError("upstream down")

    trio.run(queue.serve)


def failure_path(dsn: str, queue: str, jobs: int, processes: int, workers: int) -> float:
    """Jobs/s of ``jobs`` jobs that fail twice (once with a retry left: 'failed', then
    'dead'), each failure a row of kyu_attempts: enqueued, then burnt down."""
    import trio

    from kyu_trio import Config, EnqueueRequest, Queue

    async def enqueue() -> None:
        async with Queue(
            Config(dsn=dsn, redis_url=REDIS_URL, queue_name=queue, metrics_port=0)
        ) as q:
            batch = [EnqueueRequest("fail", "", max_retries=1)] * 1000
            for _ in range(jobs // 1000):
                await q.enqueue_many(batch)

    trio.run(enqueue)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.dashboard", queue, str(workers), "--fail-worker"],
            cwd=ROOT,
            env={**os.environ, "KYU_DSN": dsn, "KYU_REDIS_URL": REDIS_URL},
        )
        for _ in range(processes)
    ]
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM kyu_jobs WHERE queue = %s AND status = 'dead'", (queue,)
                ).fetchone()
                if row is not None and row[0] >= jobs:
                    break
                if any(p.poll() not in (None, 0) for p in procs):
                    raise RuntimeError("a failing worker process exited")
                time.sleep(0.05)
        return jobs / (time.perf_counter() - started)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def index_cost(rounds: int, jobs: int, single: int) -> dict[str, Any]:
    """bench.throughput's figures (enqueue one by one and in batches, no-op jobs
    processed) and `failure_path`, on two scratch databases that differ only by
    migration 013's two indexes, in interleaved rounds (A B | B A | ...)."""
    import trio

    from . import _common, throughput

    with psycopg.connect(DSN, autocommit=True) as conn:
        for name in INDEX_DATABASES.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    from kyu_trio._store._postgres import migrate

    for side, name in INDEX_DATABASES.items():
        with psycopg.connect(_dsn(name), autocommit=True) as conn:
            migrate(conn)
            if side == "without":
                conn.execute(DROP_013)
    figures: dict[str, list[dict[str, float]]] = {side: [] for side in INDEX_DATABASES}
    saved = _common.DSN, throughput.DSN
    try:
        for r in range(rounds):
            order = list(INDEX_DATABASES) if r % 2 == 0 else list(reversed(INDEX_DATABASES))
            for side in order:
                dsn = _dsn(INDEX_DATABASES[side])
                _common.DSN = throughput.DSN = dsn
                queue = _common.new_queue_name(f"dash-{side}")
                try:
                    found = trio.run(throughput.enqueue_figures, queue, jobs, single)
                    done = _common.run_workers("bench._kyu_worker", queue, 2, 50, jobs)
                    found["processed_per_s"] = done["jobs_per_s"]
                    found["failures_per_s"] = failure_path(dsn, queue + "-fail", jobs, 2, 50)
                finally:
                    throughput.cleanup(queue, queue + "-single", queue + "-fail")
                figures[side].append(found)
                print(f"  round {r + 1} {side:7s} {found}", flush=True)
    finally:
        _common.DSN, throughput.DSN = saved
        with psycopg.connect(DSN, autocommit=True) as conn:
            for name in INDEX_DATABASES.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ratios = {
        key: sorted(
            w[key] / wo[key] for w, wo in zip(figures["with"], figures["without"], strict=True)
        )
        for key in figures["with"][0]
    }
    return {"rounds": figures, "ratios": ratios}


# ---- the report ------------------------------------------------------------------------


def summary(
    rows: list[dict[str, Any]],
    seed: dict[str, Any],
    jobs: int,
    requests: int,
    cost: dict[str, Any] | None,
) -> str:
    over = [r for r in rows if r["median_ms"] >= TARGET_MS or r["max_ms"] >= TARGET_MS]
    lines = [
        f"# The dashboard on {jobs:,} jobs",
        "",
        f"Machine: {machine()['cpus']} CPUs, Python {machine()['python']}, "
        f"{machine()['platform']}; PostgreSQL and Redis on the same machine, stock settings.",
        f"Seeded: {jobs:,} jobs over 3 days in {seed.get('seconds', 0):.0f} s "
        f"(two queues, 40 job types + a rare one, every status; the last hour's "
        f"{seed.get('touched_last_hour', 0):,} rows rewritten after the VACUUM). Each URL: one "
        f"warm-up, then {requests} requests over HTTP to `kyu-trio dashboard` (Hypercorn on "
        "trio, its own pool of at most 4 connections); milliseconds, whole request.",
        "",
        "| what | URLs | median of medians | worst median | worst max | over 200 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for group in ("overview", "first page", "id", "deep paging"):
        mine = [r for r in rows if r["group"] == group]
        if not mine:
            continue
        lines.append(
            f"| {group} | {len(mine)} | {statistics.median(r['median_ms'] for r in mine):.1f} | "
            f"{max(r['median_ms'] for r in mine):.1f} | {max(r['max_ms'] for r in mine):.1f} | "
            f"{sum(1 for r in mine if r in over)} |"
        )
    cut = [r for r in rows if r["cut_short"]]
    lines += [
        "",
        f"First pages cut short by the scan limit (a job type no index holds, rare in the "
        f"rows examined; the page says how far it looked and links to the rest): {len(cut)} "
        f"of {sum(1 for r in rows if r['group'] == 'first page')}.",
        "",
        "The slowest URLs (by worst request):",
        "",
        "| URL | median ms | max ms | rows |",
        "|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: -r["max_ms"])[:12]:
        lines.append(f"| `{r['label']}` | {r['median_ms']:.1f} | {r['max_ms']:.1f} | {r['rows']} |")
    deep = [r for r in rows if r["group"] == "deep paging"]
    if deep:
        lines += ["", 'Deep paging (following the "older" links):', ""]
        lines += ["| page | median ms | max ms |", "|---|---:|---:|"]
        lines += [f"| {r['label']} | {r['median_ms']:.1f} | {r['max_ms']:.1f} |" for r in deep]
    if cost is not None:
        lines += [
            "",
            "What migration 013's indexes cost the workers: bench.throughput's figures and a "
            "failure path (every job fails twice: once to 'failed', then to 'dead', each "
            "failure a row of kyu_attempts), on two scratch databases that differ only by the "
            f"two indexes, in {len(cost['rounds']['with'])} interleaved rounds; ratio with / "
            "without, median and min-max of the per-round ratios:",
            "",
            "| figure | without | with | with / without | min-max |",
            "|---|---:|---:|---:|---:|",
        ]
        names = {
            "single_enqueue_per_s": "enqueue one by one, jobs/s",
            "bulk_enqueue_per_s": "enqueue_many (1,000), jobs/s",
            "processed_per_s": "no-op jobs processed/s",
            "failures_per_s": "failing jobs processed/s (2 runs each)",
        }
        for key, label in names.items():
            ratio = cost["ratios"][key]
            without = statistics.median(r[key] for r in cost["rounds"]["without"])
            with_ = statistics.median(r[key] for r in cost["rounds"]["with"])
            lines.append(
                f"| {label} | {without:,.0f} | {with_:,.0f} | {statistics.median(ratio):.3f} | "
                f"{ratio[0]:.3f}-{ratio[-1]:.3f} |"
            )
        lines += [
            "",
            "Enqueues and no-op jobs write no row to either index (no run is recorded, no job "
            "becomes 'failed'): their ratios show this machine's noise between rounds. Only "
            "the failure path writes them: one entry per failed run, one per job entering "
            "'failed'.",
        ]
    verdict = "all under 200 ms" if not over else f"{len(over)} URLs reached 200 ms"
    lines += [
        "",
        f"Target: every request under {TARGET_MS:.0f} ms: {verdict}.",
        "Reproduce: `.venv/bin/python -m bench.dashboard` (`--keep` keeps the seeded "
        f"database `{DATABASE}`, `--reuse` measures it again without seeding).",
    ]
    return "\n".join(lines)


def main() -> None:
    import argparse

    if "--fail-worker" in sys.argv[1:]:
        queue, workers = sys.argv[1], int(sys.argv[2])
        fail_worker(queue, workers)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5_000_000)
    parser.add_argument("--requests", type=int, default=7, help="timed requests per URL")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--reuse", action="store_true", help="measure a database kept earlier")
    parser.add_argument(
        "--index-cost-rounds",
        type=int,
        default=5,
        help="rounds of the measure of migration 013's cost to the workers (0: skip it)",
    )
    parser.add_argument("--index-cost-jobs", type=int, default=20_000)
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args()
    dsn = _dsn(DATABASE)
    found = seeded(dsn) if args.reuse else None
    seed: dict[str, Any] = {}
    try:
        if found is None:
            print(f"seeding {args.jobs:,} jobs into {DATABASE}", flush=True)
            create_database()
            seed = seed_database(dsn, args.jobs)
            seeded_at = seed["seeded_at"]
            jobs = args.jobs
        else:
            jobs, seeded_at = found
            seed = {"reused": True}
            print(f"reusing {DATABASE}: {jobs:,} jobs seeded at {seeded_at:%Y-%m-%d %H:%M}")
        rows = measure(dsn, seeded_at, args.requests)
    finally:
        if not args.keep:
            drop_database()
    cost = None
    if args.index_cost_rounds > 0:
        print("migration 013's cost to the workers", flush=True)
        cost = index_cost(args.index_cost_rounds, args.index_cost_jobs, args.index_cost_jobs // 10)
    data = {
        "machine": machine(),
        "args": vars(args),
        "seed": seed,
        "rows": rows,
        "index_cost": cost,
    }
    text = summary(rows, seed, jobs, args.requests, cost)
    if args.no_save:
        print(text)
    else:
        write_results("dashboard", data, text)


def seed_database(dsn: str, total: int) -> dict[str, Any]:
    result = seed(dsn, total)
    found = seeded(dsn)
    assert found is not None
    result["seeded_at"] = found[1]
    return result


if __name__ == "__main__":
    main()
