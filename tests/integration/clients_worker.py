"""A worker process for the client tests: serves one queue until SIGTERM.

Handlers: ``echo`` returns its payload, ``add`` the sum of its payload's numbers,
``fail`` raises, ``sleep`` sleeps ``payload`` seconds, and ``record`` writes its run to
``kyu_client_exec`` (job id, attempt) so that a test counts executions on its own.
Usage: python -m tests.integration.clients_worker DSN REDIS_URL QUEUE
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import psycopg_pool
import trio

from kyu_trio import Config, Queue, current_job


def main() -> None:
    dsn, redis_url, queue_name = sys.argv[1:4]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    pool = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=8, open=True)
    queue = Queue(
        Config(
            dsn=dsn,
            redis_url=redis_url,
            queue_name=queue_name,
            workers=50,
            metrics_port=0,
            shutdown_grace=2.0,
            scheduler_interval=0.2,
            max_backoff=0.1,
        )
    )

    @queue.handler("echo")
    async def echo(payload: Any) -> Any:
        return payload

    @queue.handler("add")
    async def add(payload: Any) -> Any:
        return sum(payload)

    @queue.handler("fail")
    async def fail(payload: Any) -> None:
        raise ValueError(f"no good: {payload}")

    @queue.handler("sleep")
    async def sleep(payload: Any) -> None:
        await trio.sleep(float(payload))

    @queue.handler("record")
    def record(payload: Any) -> int:
        job = current_job()
        with pool.connection() as conn:
            conn.execute(
                "INSERT INTO kyu_client_exec (job_id, attempt) VALUES (%s, %s)",
                (job.id, job.attempt),
            )
        return int(payload)

    print("serving", flush=True)
    trio.run(queue.serve)
    pool.close()


if __name__ == "__main__":
    main()
