"""A worker process for the cancellation tests: serves one queue until SIGTERM.

Handlers write what they live through to ``kyu_test_cancel`` (job id, event, wall-clock
time, pid), so the test sees from outside when a run started, when its cancel scope was
cancelled and that its ``finally`` block ran.

- ``hold``: sleeps ``payload`` seconds (long: until cancelled).
- ``quick``: announces its start (``pg_notify('kyu_test_started', id)``), sleeps
  ``payload`` milliseconds and records that it returned: a cancel sent on hearing the
  start races its completion.

Usage: python -m tests.integration.cancel_worker DSN REDIS_URL QUEUE WORKERS
"""

from __future__ import annotations

import logging
import os
import sys
import time

import psycopg_pool
import trio

from kyu_trio import Config, Queue, current_job

#: The side table; the test creates it before starting workers.
TABLE = """
CREATE TABLE IF NOT EXISTS kyu_test_cancel (
    job_id uuid NOT NULL, event text NOT NULL, at float8 NOT NULL, pid int NOT NULL
)"""


def main() -> None:
    dsn, redis_url, queue_name, workers = sys.argv[1:5]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    pool = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=int(workers) + 1, open=True)
    queue = Queue(
        Config(
            dsn=dsn,
            redis_url=redis_url,
            queue_name=queue_name,
            workers=int(workers),
            metrics_port=0,
            shutdown_grace=2.0,
            heartbeat_interval=0.5,
            stale_job_timeout=2.0,
            reaper_interval=0.5,
            scheduler_interval=0.2,
        )
    )

    def write(sql: str, *args: object) -> None:
        with pool.connection() as conn:
            conn.execute(sql, args)

    async def record(job_id: str, event: str, at: float | None = None) -> None:
        stamp = time.time() if at is None else at
        sql = "INSERT INTO kyu_test_cancel VALUES (%s, %s, %s, %s)"
        # Shielded: a cleanup must not be cut short by the cancellation it reports.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(write, sql, job_id, event, stamp, os.getpid())

    @queue.handler("hold")
    async def hold(seconds: float) -> None:
        job_id = current_job().id
        await record(job_id, "start")
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            await record(job_id, "cancelled", time.time())
            raise
        finally:
            await record(job_id, "finally")

    @queue.handler("quick")
    async def quick(ms: float) -> str:
        job_id = current_job().id
        await trio.to_thread.run_sync(write, "SELECT pg_notify('kyu_test_started', %s)", job_id)
        try:
            await trio.sleep(ms / 1000)
        except trio.Cancelled:
            await record(job_id, "cancelled", time.time())
            raise
        await record(job_id, "returned")  # shielded: it returns after this
        return "done"

    async def serve() -> None:
        await queue.serve()
        print("serve returned", flush=True)

    trio.run(serve)
    pool.close()


if __name__ == "__main__":
    main()
