"""A worker process for the fault-injection suite: serves one queue until SIGTERM/SIGINT.

Run from the repository root::

    python -m tests.faults.worker --dsn DSN --redis-url URL --queue NAME [options]

Every option can also come from the environment (``KYU_FAULT_<OPTION>``, e.g.
``KYU_FAULT_STALE_JOB_TIMEOUT=1``); the command line wins.

Handlers:

``record``
    A plain ``def`` handler (it runs in a thread). The payload is ``"S"`` or ``"S/T"``:
    sleep ``S`` seconds on the first attempt (``T`` on later ones, default ``S``), then
    INSERT ``(job_id, attempt, pid)`` into ``kyu_fault_exec`` (keyed by a token drawn per
    call, so retrying the INSERT across a PostgreSQL restart cannot record one run
    twice, while two runs of one claim would still show). The row is committed before
    the handler returns, so before the runtime writes the job's completion: the side table
    is a durable record of every execution that ran to its end.
``poison``
    ``os._exit(1)``: the whole process dies mid-job, as with a segfault.

The process prints ``ready <worker id>`` once it is serving and ``serve returned`` when
``serve()`` has returned after a graceful stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence

import psycopg
import psycopg_pool
import trio

from kyu_trio import Config, Queue, current_job

EXEC_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS kyu_fault_exec (
    job_id  uuid        NOT NULL,
    attempt integer     NOT NULL,
    pid     integer     NOT NULL,
    run     uuid        PRIMARY KEY,  -- one per handler call: a retried INSERT is a no-op
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)"""
INSERT_EXEC = """
INSERT INTO kyu_fault_exec (job_id, attempt, pid, run) VALUES (%s, %s, %s, %s)
ON CONFLICT (run) DO NOTHING"""

#: How long the ``record`` handler keeps retrying its INSERT while PostgreSQL is away.
RECORD_RETRY_FOR = 30.0

OPTIONS: list[tuple[str, type, object]] = [
    # (option, type, default)
    ("dsn", str, None),
    ("redis_url", str, None),
    ("queue", str, None),
    ("workers", int, 4),
    ("shutdown_grace", float, 5.0),
    ("stale_job_timeout", float, 1.0),
    ("heartbeat_interval", float, 0.2),
    ("reaper_interval", float, 0.3),
    ("scheduler_interval", float, 0.2),
    ("pool_size", int, 10),
    ("log_level", str, "WARNING"),
]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.worker")
    for name, kind, default in OPTIONS:
        env = os.environ.get(f"KYU_FAULT_{name.upper()}")
        value = kind(env) if env not in (None, "") else default
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, default=value,
            required=value is None,
        )  # fmt: skip
    return parser.parse_args(argv)


def parse_sleep(payload: str, attempt: int) -> float:
    first, _, later = payload.partition("/")
    return float(first if attempt <= 1 or not later else later)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format=f"%(asctime)s [{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    pid = os.getpid()
    pool = psycopg_pool.ConnectionPool(
        args.dsn, min_size=1, max_size=args.workers, open=True, timeout=5.0,
        kwargs={"autocommit": True, "connect_timeout": 5},
    )  # fmt: skip
    queue = Queue(
        Config(
            dsn=args.dsn,
            redis_url=args.redis_url,
            queue_name=args.queue,
            workers=args.workers,
            metrics_port=0,
            shutdown_grace=args.shutdown_grace,
            stale_job_timeout=args.stale_job_timeout,
            heartbeat_interval=args.heartbeat_interval,
            reaper_interval=args.reaper_interval,
            scheduler_interval=args.scheduler_interval,
            pool_size=args.pool_size,
        )
    )

    @queue.handler("record")
    def record(payload: str) -> None:
        job = current_job()
        run = uuid.uuid4()
        time.sleep(parse_sleep(payload, job.attempt))
        # The side table is test machinery, not the system under test: ride out a
        # PostgreSQL restart here so that each finished run is recorded exactly once.
        deadline = time.monotonic() + RECORD_RETRY_FOR
        while True:
            try:
                with pool.connection() as conn:
                    conn.execute(INSERT_EXEC, (job.id, job.attempt, pid, run))
                return
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @queue.handler("poison")
    def poison(payload: str) -> None:
        os._exit(1)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            print("ready", queue.worker_id, flush=True)
        print("serve returned", flush=True)

    try:
        trio.run(serve)
    finally:
        pool.close(timeout=0.5)  # bounded: the server may be frozen (SIGSTOP)


if __name__ == "__main__":
    main()
