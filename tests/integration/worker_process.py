"""A worker process for the multi-process tests: serves one queue until SIGTERM.

Every execution of a ``record`` job is written to ``kyu_test_exec`` (job id, attempt), so
the test can count executions independently of the jobs table.
Usage: python -m tests.integration.worker_process DSN REDIS_URL QUEUE WORKERS GRACE
"""

from __future__ import annotations

import logging
import sys

import psycopg_pool
import trio

from kyu_trio import Config, Queue, current_job


def main() -> None:
    dsn, redis_url, queue_name, workers, grace = sys.argv[1:6]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    pool = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=int(workers), open=True)
    queue = Queue(
        Config(
            dsn=dsn,
            redis_url=redis_url,
            queue_name=queue_name,
            workers=int(workers),
            metrics_port=0,
            shutdown_grace=float(grace),
            scheduler_interval=0.5,
        )
    )

    @queue.handler("record")
    def record(payload: str) -> None:
        job = current_job()
        with pool.connection() as conn:
            conn.execute(
                "INSERT INTO kyu_test_exec (job_id, attempt) VALUES (%s, %s)", (job.id, job.attempt)
            )

    @queue.handler("sleep")
    async def sleep(payload: str) -> None:
        await trio.sleep(float(payload))

    async def serve() -> None:
        await queue.serve()
        print("serve returned", flush=True)

    trio.run(serve)
    pool.close()


if __name__ == "__main__":
    main()
