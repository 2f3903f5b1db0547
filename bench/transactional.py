"""Commit-to-dispatch latency of transactional enqueue (``conn=``): from the caller's
COMMIT returning to a serving worker's handler starting the job, which takes the row's
NOTIFY, the worker's push to Redis, a fetch and a claim.

    KYU_DSN=postgresql://postgres@127.0.0.1:5432/bench \\
        .venv/bin/python -m bench.transactional --jobs 200

Jobs are committed one by one, ``--gap`` seconds apart (a web app's pace, not a flood),
each in its own transaction through `Client.enqueue(conn=...)`; the worker is a trio
thread of the same process, so one monotonic clock times both ends. The issue asks for
a median under 100 ms and every job within 1 s. Applies the migrations to KYU_DSN's
database: point it at a scratch database.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psycopg
import trio

from kyu_trio import Client, Config, Queue

from ._common import DSN, REDIS_URL, new_queue_name
from .throughput import cleanup


def measure(jobs: int, gap: float) -> list[float]:
    config = Config(dsn=DSN, redis_url=REDIS_URL, queue_name=new_queue_name("tx"), workers=10)
    picked: dict[int, float] = {}
    done = threading.Event()
    queue = Queue(config)

    @queue.handler("tick")
    async def tick(payload: int) -> None:
        picked[payload] = time.monotonic()
        if len(picked) == jobs:
            done.set()

    token: list[trio.lowlevel.TrioToken] = []
    started = threading.Event()

    async def serve() -> None:
        token.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            started.set()

    worker = threading.Thread(target=trio.run, args=(serve,))
    worker.start()
    started.wait(30)
    committed: dict[int, float] = {}
    try:
        with Client(config) as client, psycopg.connect(DSN) as conn:
            for i in range(jobs):
                with conn.transaction():
                    client.enqueue("tick", i, conn=conn)
                committed[i] = time.monotonic()
                time.sleep(gap)
            done.wait(30)
    finally:
        trio.from_thread.run_sync(queue.shutdown, trio_token=token[0])
        worker.join()
        cleanup(config.queue_name)
    return [picked[i] - committed[i] for i in range(jobs) if i in picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.01, help="seconds between commits")
    args = parser.parse_args()
    latencies = sorted(measure(args.jobs, args.gap))
    ms = [x * 1000 for x in latencies]
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{len(ms)}/{args.jobs} jobs picked up; commit-to-dispatch median "
        f"{statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
