"""The floor: the bare batched loop with no framework around it.

ZPOPMIN 50 -> one claim UPDATE -> (no-op) -> one completion UPDATE, each through a worker
thread, in one trio task. Same servers, same table, same jobs as kyu-trio's run.

bench/throughput.py starts it as a worker process, in the same invocation as kyu-trio's
workers (``python -m bench.floor QUEUE [WORKERS]``, KYU_DSN and KYU_REDIS_URL set), and
reports kyu-trio's processed jobs/s as a fraction of this loop's.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import psycopg
import redis
import trio

BATCH = 50

CLAIM = """
UPDATE kyu_jobs SET status = 'running', locked_by = 'floor', locked_at = %(now)s,
    attempt = attempt + 1, updated_at = %(now)s
WHERE id = ANY(%(ids)s::uuid[]) AND status = 'pending'
RETURNING id, attempt
"""
COMPLETE = """
UPDATE kyu_jobs AS j SET status = 'completed', completed_at = %(now)s, updated_at = %(now)s
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS t(id, attempt)
WHERE j.id = t.id AND j.attempt = t.attempt AND j.status = 'running'
"""


def claim(conn: psycopg.Connection, ids: list[str], now: datetime) -> list[tuple[str, int]]:
    return conn.execute(CLAIM, {"ids": ids, "now": now}).fetchall()  # type: ignore[return-value]


def complete(conn: psycopg.Connection, rows: list[tuple[str, int]], now: datetime) -> None:
    ids, attempts = [r[0] for r in rows], [r[1] for r in rows]
    conn.execute(COMPLETE, {"ids": ids, "attempts": attempts, "now": now})


async def main() -> None:
    queue = sys.argv[1]
    r = redis.Redis.from_url(os.environ["KYU_REDIS_URL"])
    conn = psycopg.connect(os.environ["KYU_DSN"], autocommit=True)
    while True:
        popped = await trio.to_thread.run_sync(r.zpopmin, queue, BATCH)
        if not popped:
            await trio.sleep(0.001)
            continue
        ids = [m.decode() for m, _ in popped]
        now = datetime.now(UTC)
        rows = await trio.to_thread.run_sync(claim, conn, ids, now)
        await trio.to_thread.run_sync(complete, conn, rows, now)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.floor QUEUE [WORKERS]; run through bench.throughput")
    trio.run(main)
