"""The floor: the best a bare loop does with no framework around it, on the same table,
the same servers and the same job body as the systems measured.

A worker process of the floor runs LOOPS concurrent trio tasks. Each task, on its own
PostgreSQL connection, repeats: ZPOPMIN 50 ids -> one claim UPDATE -> every job's body,
concurrently (one Redis INCR per job when PEER_COUNTER_KEY is set, as the peers' and
kyu-trio's jobs in bench/peers.py do; nothing otherwise) -> one completion UPDATE. Each
blocking call runs in a worker thread, as kyu-trio's adapters do.

    python -m bench.floor QUEUE LOOPS        # one worker process (bench/_common.run_workers)
    python -m bench.floor --curve [--jobs N] [--processes 1,2] [--loops 1,2,4,8,16]

``--curve`` measures the floor at every (processes, loops) of the grid with the INCR job
body, and kyu-trio (bench/_kyu_incr_worker.py, 2 processes: at its defaults and at
workers=50) in the same run, on the same table: the curve shows where the floor stops
growing, its best point is the floor, and kyu-trio's rate is given as a share of it,
with CPU seconds per 1,000 jobs of the workers, PostgreSQL and Redis for each point.
A single serial loop (LOOPS=1, 1 process) is only the first point of the curve, not the
floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
import trio

BATCH = 50

CLAIM = """
UPDATE kyu_jobs SET status = 'running', locked_by = 'floor', locked_at = %(now)s,
    heartbeat_at = %(now)s, attempt = attempt + 1, updated_at = %(now)s
WHERE id = ANY(%(ids)s::uuid[]) AND status = 'pending'
RETURNING id, attempt
"""
COMPLETE = """
UPDATE kyu_jobs AS j SET status = 'completed', completed_at = %(now)s, updated_at = %(now)s
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS t(id, attempt)
WHERE j.id = t.id AND j.attempt = t.attempt AND j.status = 'running'
"""


def claim(conn: psycopg.Connection[Any], ids: list[str], now: datetime) -> list[Any]:
    return conn.execute(CLAIM, {"ids": ids, "now": now}).fetchall()


def complete(conn: psycopg.Connection[Any], rows: list[Any], now: datetime) -> None:
    ids, attempts = [r[0] for r in rows], [r[1] for r in rows]
    conn.execute(COMPLETE, {"ids": ids, "attempts": attempts, "now": now})


async def loop(queue: str, r: redis.Redis, dsn: str, body: Any) -> None:
    conn = await trio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))
    while True:
        popped = await trio.to_thread.run_sync(r.zpopmin, queue, BATCH)
        if not popped:
            await trio.sleep(0.001)
            continue
        ids = [m.decode() for m, _ in popped]
        rows = await trio.to_thread.run_sync(claim, conn, ids, datetime.now(UTC))
        if body is not None:
            async with trio.open_nursery() as nursery:
                for _ in rows:
                    nursery.start_soon(body)
        await trio.to_thread.run_sync(complete, conn, rows, datetime.now(UTC))


async def serve(queue: str, loops: int) -> None:
    r = redis.Redis.from_url(os.environ["KYU_REDIS_URL"])
    body = None
    counter = os.environ.get("PEER_COUNTER_KEY")
    if counter:
        from ._kyu_incr_worker import RedisIncr

        client = RedisIncr(os.environ["PEER_REDIS_URL"])

        async def incr() -> None:
            await client.incr(counter)

        body = incr
    # Threads for every loop's blocking call at once (trio's default limiter is 40).
    trio.to_thread.current_default_thread_limiter().total_tokens = max(40, 2 * loops)
    async with trio.open_nursery() as nursery:
        for _ in range(loops):
            nursery.start_soon(loop, queue, r, os.environ["KYU_DSN"], body)


# ---- the curve ---------------------------------------------------------------------------


def _enqueue(queue_name: str, jobs: int) -> None:
    from kyu_trio import Config, EnqueueRequest, Queue

    from ._common import DSN, REDIS_URL

    async def fill() -> None:
        queue = Queue(Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name, metrics_port=0))
        async with queue:
            batch = [EnqueueRequest("noop", "")] * 1000
            for _ in range(jobs // 1000):
                await queue.enqueue_many(batch)

    trio.run(fill)


def _cleanup(queue_name: str) -> None:
    from ._common import DSN, REDIS_URL

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DELETE FROM kyu_jobs WHERE queue = %s", (queue_name,))
    redis.Redis.from_url(REDIS_URL).delete(queue_name, f"{queue_name}:~epoch")


def curve(args: argparse.Namespace) -> None:
    from ._common import REDIS_URL, machine, new_queue_name, run_workers, write_results

    jobs = args.jobs - args.jobs % 1000
    counter = f"kyu-floor-bench:{uuid.uuid4().hex}:done"
    os.environ.update(PEER_COUNTER_KEY=counter, PEER_REDIS_URL=REDIS_URL)
    points: list[dict[str, Any]] = []
    runs: list[tuple[str, str, int, int | str]] = [
        ("floor", "bench.floor", p, n) for p in args.processes for n in args.loops
    ]
    runs += [
        ("kyu-trio defaults", "bench._kyu_incr_worker", 2, "default"),
        ("kyu-trio workers=50", "bench._kyu_incr_worker", 2, 50),
    ]
    try:
        for name, module, processes, loops in runs:
            queue_name = new_queue_name("floor")
            try:
                _enqueue(queue_name, jobs)
                figures = run_workers(module, queue_name, processes, loops, jobs)
            finally:
                _cleanup(queue_name)
            points.append({"system": name, "processes": processes, "loops": loops, **figures})
            print(f"{name:20} {processes} x {loops!s:8} {figures['jobs_per_s']:9,.0f} jobs/s")
    finally:
        redis.Redis.from_url(REDIS_URL).delete(counter)
    floor_points = [p for p in points if p["system"] == "floor"]
    best = max(floor_points, key=lambda p: p["jobs_per_s"])
    lines = [
        f"# The floor: concurrent bare batch loops ({jobs:,} jobs, body: one Redis INCR each)",
        "",
        f"Machine: {machine()}. Same table, servers and job body for every row.",
        "",
        "| system | processes | loops / workers | jobs/s | share of the floor "
        "| worker CPU s / 1k | PostgreSQL CPU s / 1k | Redis CPU s / 1k |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['system']} | {p['processes']} | {p['loops']} | {p['jobs_per_s']:,.0f} | "
            f"{p['jobs_per_s'] / best['jobs_per_s']:.0%} | {p['worker_cpu_s_per_1k']:.3f} | "
            f"{p['postgres_cpu_s_per_1k']:.3f} | {p['redis_cpu_s_per_1k']:.3f} |"
        )
    lines += [
        "",
        f"The floor: {best['jobs_per_s']:,.0f} jobs/s ({best['processes']} processes x "
        f"{best['loops']} loops), the best point of the curve.",
        "Reproduce: `.venv/bin/python -m bench.floor --curve --jobs "
        f"{args.jobs} --processes {','.join(map(str, args.processes))} "
        f"--loops {','.join(map(str, args.loops))}`",
    ]
    write_results(
        "floor",
        {"machine": machine(), "args": vars(args), "points": points, "floor": best},
        "\n".join(lines),
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        queue, loops = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8
        trio.run(serve, queue, loops)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--curve", action="store_true", required=True)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=_ints, default=[1, 2])
    parser.add_argument("--loops", type=_ints, default=[1, 2, 4, 8, 16])
    curve(parser.parse_args())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
