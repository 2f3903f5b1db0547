"""How cost grows: processes, historic rows in the table, scheduled jobs.

    .venv/bin/python -m bench.scale --jobs 20000 --processes 1 2 4 \\
        --history 10000 1000000 5000000 --scheduled 100000
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import trio
from psycopg import sql

from kyu_trio import Config, EnqueueRequest, Queue
from kyu_trio._broker._redis import RedisBroker
from kyu_trio._runtime._metrics import Metrics
from kyu_trio._runtime._scheduler import Scheduler
from kyu_trio._runtime._service import Context
from kyu_trio._store import _queries as q
from kyu_trio._store._postgres import PostgresStore

from ._common import DSN, REDIS_URL, machine, new_queue_name, run_workers, write_results
from .throughput import cleanup

HISTORY_QUEUE = "kyu:bench-history"

INSERT_ROWS = """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, priority, scheduled_at,
                      max_retries, job_timeout, created_at, updated_at, completed_at)
SELECT gen_random_uuid(), %(queue)s, 'noop', '', %(status)s, 0, %(due)s, 3, 30,
       %(now)s, %(now)s, CASE WHEN %(status)s = 'completed' THEN %(now)s END
FROM generate_series(1, %(n)s)
"""


def insert_rows(queue: str, n: int, status: str, due: datetime) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            INSERT_ROWS, {"queue": queue, "n": n, "status": status, "due": due, "now": now}
        )
        conn.execute("ANALYZE kyu_jobs")


# The scheduler's own promotion statement (PROMOTE_DUE, batches of 1,000), run by the
# server itself until nothing is due: what promotion costs with no client, no round trip
# and no push, the floor of a scheduler tick. PL/pgSQL has nowhere to put the RETURNING
# rows, so they are left out; the parameters become the queue, now() and the batch.
PROMOTE_IN_SERVER = """
DO $$
DECLARE n int;
BEGIN
    LOOP
        {statement};
        GET DIAGNOSTICS n = ROW_COUNT;
        EXIT WHEN n < 1000;
    END LOOP;
END $$
"""


def promote_in_server(queue: str) -> float:
    """Seconds PostgreSQL alone takes to promote every due job of ``queue``."""
    statement = (
        q.PROMOTE_DUE.split("RETURNING")[0]
        .strip()
        .replace("%(queue)s", "{queue}")
        .replace("%(now)s", "now()")
        .replace("%(limit)s", "1000")
    )
    block = sql.SQL(PROMOTE_IN_SERVER.replace("{statement}", statement)).format(
        queue=sql.Literal(queue)
    )
    with psycopg.connect(DSN, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(block)
        return time.perf_counter() - started


async def fill(queue_name: str, jobs: int) -> None:
    queue = Queue(Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name, metrics_port=0))
    async with queue:
        for _ in range(jobs // 1000):
            await queue.enqueue_many([EnqueueRequest("noop", "")] * 1000)


def burn(jobs: int, processes: int, workers: int) -> dict[str, float]:
    queue_name = new_queue_name(f"scale{processes}")
    try:
        trio.run(fill, queue_name, jobs)
        return run_workers("bench._kyu_worker", queue_name, processes, workers, jobs)
    finally:
        cleanup(queue_name)


async def scheduler_ticks(queue_name: str) -> tuple[float, float]:
    store, broker = PostgresStore(DSN), RedisBroker(REDIS_URL)
    await store.open()
    await broker.open()
    try:
        context = Context(
            queue=queue_name,
            store=store,
            broker=broker,
            clock=_Clock(),
            log=_quiet(),
            metrics=Metrics(queue_name, "bench", lambda _job_type: True),
        )
        scheduler = Scheduler(context, interval=5)
        await broker.claim_epoch(queue_name)  # measure promotion, not a first-start resync
        started = time.perf_counter()
        await scheduler.run_once()
        busy = time.perf_counter() - started
        started = time.perf_counter()
        await scheduler.run_once()
        idle = time.perf_counter() - started
        return busy, idle
    finally:
        await broker.close()
        await store.close()


class _Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def _quiet() -> Any:
    import logging

    logger = logging.getLogger("kyu_trio.bench")
    logger.setLevel(logging.ERROR)
    return logger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--history", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--scheduled", type=int, default=100_000)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    lines = ["# Scale", ""]

    results["processes"] = {p: burn(args.jobs, p, args.workers) for p in args.processes}
    lines += ["| worker processes | processed jobs/s |", "|---|---|"]
    lines += [f"| {p} | {r['jobs_per_s']:,.0f} |" for p, r in results["processes"].items()]

    results["history"] = {}
    present = 0
    try:
        for rows in sorted(args.history):
            insert_rows(HISTORY_QUEUE, rows - present, "completed", datetime.now(UTC))
            present = rows
            results["history"][rows] = burn(args.jobs, 1, args.workers)
    finally:
        cleanup(HISTORY_QUEUE)
    if results["history"]:
        base = min(results["history"])
        base_cost = 1 / results["history"][base]["jobs_per_s"]
        lines += [
            "",
            "| historic rows | processed jobs/s | per-job cost vs smallest |",
            "|---|---|---|",
        ]
        for rows, r in results["history"].items():
            cost = (1 / r["jobs_per_s"]) / base_cost
            lines.append(f"| {rows:,} | {r['jobs_per_s']:,.0f} | {cost:.2f}x |")

    if args.scheduled:
        queue_name = new_queue_name("sched")
        server_queue = new_queue_name("sched-server")
        due = datetime.now(UTC) - timedelta(seconds=1)
        try:
            insert_rows(queue_name, args.scheduled, "scheduled", due)
            busy, idle = trio.run(scheduler_ticks, queue_name)
            insert_rows(server_queue, args.scheduled, "scheduled", due)
            in_server = promote_in_server(server_queue)
        finally:
            cleanup(queue_name, server_queue)
        results["scheduler"] = {
            "scheduled": args.scheduled,
            "promote_all_s": busy,
            "idle_tick_s": idle,
            "promote_in_server_s": in_server,
        }
        lines += [
            "",
            f"Scheduler tick promoting {args.scheduled:,} due jobs: {busy:.2f} s; "
            f"an idle tick afterwards: {idle * 1000:.1f} ms. The same promotion statement "
            f"run by PostgreSQL alone, in a PL/pgSQL loop (no client, no push): "
            f"{in_server:.2f} s.",
        ]
    lines += [
        "",
        "Reproduce: `.venv/bin/python -m bench.scale --jobs "
        f"{args.jobs} --processes {' '.join(map(str, args.processes))} --history "
        f"{' '.join(map(str, args.history))} --scheduled {args.scheduled}`",
    ]
    write_results("scale", results, "\n".join(lines))


if __name__ == "__main__":
    main()
