"""The clients (issue 12): single enqueue through `Client` and `AsyncioClient` against
`Queue`, and what announcing finished jobs to `result()` waiters costs the workers when
nobody waits (the hot path) and when someone does.

    .venv/bin/python -m bench.clients --single 2000 --jobs 5000 --rounds 3

Rounds alternate between the variants (same servers, same run) and each figure is the
median of its rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import psycopg
import redis
import trio

from kyu_trio import AsyncioClient, Client, Config, EnqueueRequest, Queue
from kyu_trio._runtime import _pool
from kyu_trio._waiters import waiting_key

from ._common import DSN, REDIS_URL, machine, new_queue_name, write_results


def config(queue_name: str, **overrides: Any) -> Config:
    return Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name, metrics_port=0, **overrides)


async def queue_single(queue_name: str, n: int) -> float:
    async with Queue(config(queue_name)) as queue:
        await queue.enqueue("noop", None)  # connections warm
        started = time.perf_counter()
        for _ in range(n):
            await queue.enqueue("noop", None)
        return n / (time.perf_counter() - started)


def client_single(queue_name: str, n: int) -> float:
    with Client(config(queue_name)) as client:
        client.enqueue("noop", None)
        started = time.perf_counter()
        for _ in range(n):
            client.enqueue("noop", None)
        return n / (time.perf_counter() - started)


def transactional_single(queue_name: str, n: int) -> float:
    """Enqueues through the caller's connection (``conn=``), each in its own transaction,
    committed before the next (durable on return of the COMMIT); the serving workers'
    listener, not the producer, pushes the ids (nobody serves this queue here)."""
    with Client(config(queue_name)) as client, psycopg.connect(DSN) as conn:
        with conn.transaction():
            client.enqueue("noop", None, conn=conn)
        started = time.perf_counter()
        for _ in range(n):
            with conn.transaction():
                client.enqueue("noop", None, conn=conn)
        return n / (time.perf_counter() - started)


async def asyncio_single(queue_name: str, n: int) -> float:
    async with AsyncioClient(config(queue_name)) as client:
        await client.enqueue("noop", None)
        started = time.perf_counter()
        for _ in range(n):
            await client.enqueue("noop", None)
        return n / (time.perf_counter() - started)


async def processed(queue_name: str, jobs: int, *, announce: bool, waiting: bool) -> float:
    """Jobs/s of one process draining ``jobs`` noop jobs (run_once, 50 workers)."""
    queue = Queue(config(queue_name, workers=50))

    @queue.handler("noop")
    async def noop(payload: Any) -> None:
        pass

    key = redis.Redis.from_url(REDIS_URL)
    original = _pool.WorkerPool._announce

    async def silent(self: Any, ids: list[str]) -> None:
        await trio.lowlevel.checkpoint()

    try:
        if waiting:
            key.set(waiting_key(queue_name), "1", ex=600)
        if not announce:
            _pool.WorkerPool._announce = silent  # type: ignore[method-assign]
        async with queue:
            for _ in range(jobs // 1000):
                await queue.enqueue_many([EnqueueRequest("noop")] * 1000)
            started = time.perf_counter()
            summary = await queue.run_once()
            elapsed = time.perf_counter() - started
        assert summary.completed == jobs // 1000 * 1000, summary
        return summary.completed / elapsed
    finally:
        _pool.WorkerPool._announce = original  # type: ignore[method-assign]
        key.delete(waiting_key(queue_name))
        key.close()


async def announce_cost(calls: int = 20000) -> float:
    """Microseconds per `WorkerPool._announce` when nobody waits: what every batch of
    outcomes pays on the hot path (Redis asked at most once a second)."""
    queue_name = new_queue_name("announce")
    queue = Queue(config(queue_name))
    async with queue:
        runtime = queue._require()
        pool = _pool.WorkerPool(
            runtime.context, config=queue.config, registry=queue._registry,
            worker_id="bench", drain=True,
        )  # fmt: skip
        ids = [f"00000000-0000-7000-8000-{i:012d}" for i in range(50)]
        await pool._announce(ids)  # the one Redis call of this second
        started = time.perf_counter()
        for _ in range(calls):
            await pool._announce(ids)
        return (time.perf_counter() - started) / calls * 1e6


def cleanup(queues: list[str]) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        for q in queues:
            conn.execute("DELETE FROM kyu_jobs WHERE queue = %s", (q,))
    client = redis.Redis.from_url(REDIS_URL)
    for q in queues:
        client.delete(q, f"{q}:~epoch", waiting_key(q))
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rates: dict[str, list[float]] = {}
    queues: list[str] = []
    try:
        for _ in range(args.rounds):
            for name, run in (
                ("single_enqueue_queue", lambda q: trio.run(queue_single, q, args.single)),
                ("single_enqueue_client", lambda q: client_single(q, args.single)),
                ("single_enqueue_asyncio", lambda q: asyncio.run(asyncio_single(q, args.single))),
                ("processed_no_announce", lambda q: trio.run(
                    lambda: processed(q, args.jobs, announce=False, waiting=False))),
                ("processed_nobody_waits", lambda q: trio.run(
                    lambda: processed(q, args.jobs, announce=True, waiting=False))),
                ("processed_someone_waits", lambda q: trio.run(
                    lambda: processed(q, args.jobs, announce=True, waiting=True))),
            ):  # fmt: skip
                queue_name = new_queue_name("clients")
                queues.append(queue_name)
                rates.setdefault(name, []).append(run(queue_name))
                cleanup([queue_name])
    finally:
        cleanup(queues)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["processed_no_announce"]
    lines = [
        "# Clients and result notifications",
        "",
        f"Medians of {args.rounds} alternating rounds; {args.single} single enqueues per "
        f"round, {args.jobs} noop jobs drained by one process (50 workers) per round.",
        "",
        "| figure | jobs/s | rounds |",
        "| --- | ---: | --- |",
    ]
    for name, value in medians.items():
        rounds = ", ".join(f"{v:.0f}" for v in rates[name])
        lines.append(f"| {name} | {value:.0f} | {rounds} |")
    client_x = medians["single_enqueue_client"] / medians["single_enqueue_queue"]
    asyncio_x = medians["single_enqueue_asyncio"] / medians["single_enqueue_queue"]
    nobody = medians["processed_nobody_waits"] / base - 1
    someone = medians["processed_someone_waits"] / base - 1
    per_call = trio.run(announce_cost)
    medians["announce_nobody_waits_us"] = per_call
    lines += [
        "",
        f"Single enqueue, Client / Queue: {client_x:.2f}x; AsyncioClient / Queue: "
        f"{asyncio_x:.2f}x.",
        f"Processing with announcements, nobody waiting: {nobody:+.1%}; someone waiting "
        f"(one PUBLISH per batch): {someone:+.1%} (against the same code with announcing "
        "switched off; the rounds show the noise of a shared machine).",
        f"One batch's announcement when nobody waits (the worker's cached answer): "
        f"{per_call:.1f} µs.",
    ]
    write_results("clients", {"machine": machine(), "rates": rates, "medians": medians},
                  "\n".join(lines))  # fmt: skip


if __name__ == "__main__":
    main()
