"""Throughput: enqueue (single and bulk), then burn the jobs down with worker processes;
the bare batched loop (bench/floor.py) runs in the same invocation on the same
servers, so kyu-trio's figure is reported as a fraction of it.

    .venv/bin/python -m bench.throughput --jobs 50000 --processes 2 --workers 50
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
import trio

from kyu_trio import Config, EnqueueRequest, Queue
from kyu_trio._store import _queries as q

from ._common import DSN, REDIS_URL, machine, new_queue_name, run_workers, write_results


async def enqueue_figures(queue_name: str, jobs: int, single: int) -> dict[str, float]:
    queue = Queue(Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name, metrics_port=0))
    single_queue = Queue(
        Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name + "-single", metrics_port=0)
    )
    async with queue, single_queue:
        started = time.perf_counter()
        for _ in range(single):
            await single_queue.enqueue("noop", "")
        single_rate = single / (time.perf_counter() - started)
        started = time.perf_counter()
        batch = [EnqueueRequest("noop", "")] * 1000
        for _ in range(jobs // 1000):
            await queue.enqueue_many(batch)
        bulk_rate = jobs / (time.perf_counter() - started)
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": bulk_rate}


FLOOR_INSERT = """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, priority, scheduled_at,
                      max_retries, job_timeout, created_at, updated_at)
VALUES (%s, %s, 'noop', '', 'pending', 0, now(), 3, 30, now(), now())
RETURNING seq
"""


def single_enqueue_floor(queue_name: str, single: int) -> float:
    """The floor of a durable single enqueue: the same INSERT (committed, so waiting for
    the WAL flush) and ZADD kyu-trio does, blocking, with no thread, pool or framework."""
    client = redis.Redis.from_url(REDIS_URL)
    with psycopg.connect(DSN, autocommit=True) as conn:
        started = time.perf_counter()
        for _ in range(single):
            job_id = str(uuid.uuid4())
            row = conn.execute(FLOOR_INSERT, (job_id, queue_name)).fetchone()
            assert row is not None
            client.zadd(queue_name, {job_id: float(row[0])})
        return single / (time.perf_counter() - started)


def single_insert_floor(queue_name: str, single: int) -> float:
    """The floor of an enqueue that is one statement and no push (pgqueuer's shape): the
    same committed INSERT in a bare blocking loop, nothing sent to Redis."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        started = time.perf_counter()
        for _ in range(single):
            conn.execute(FLOOR_INSERT, (str(uuid.uuid4()), queue_name)).fetchone()
        return single / (time.perf_counter() - started)


def bulk_enqueue_floor(queue_name: str, jobs: int) -> float:
    """The floor of kyu-trio's bulk enqueue: per batch of 1,000, the batch's sequence
    numbers, one COPY of its rows (committed) and one ZADD, in a bare blocking loop: the
    library's own statements, without its validation, pool or threads."""
    client = redis.Redis.from_url(REDIS_URL)
    with psycopg.connect(DSN, autocommit=True) as conn:
        started = time.perf_counter()
        for _ in range(jobs // 1000):
            now = datetime.now(UTC)
            seqs = [r[0] for r in conn.execute(q.NEXT_SEQS, (1000,))]
            ids = [str(uuid.uuid4()) for _ in range(1000)]
            with conn.cursor().copy(q.COPY_JOBS) as copy:
                for job_id, seq in zip(ids, seqs, strict=True):
                    row = (job_id, queue_name, "noop", "", "pending", 0, seq, now, 3, 30.0)
                    copy.write_row((*row, now, now, False, None))
            client.zadd(queue_name, {i: float(s) for i, s in zip(ids, seqs, strict=True)})
        return (jobs // 1000 * 1000) / (time.perf_counter() - started)


def cleanup(*queues: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        for name in queues:
            conn.execute("DELETE FROM kyu_jobs WHERE queue = %s", (name,))
    client = redis.Redis.from_url(REDIS_URL)
    for name in queues:
        client.delete(name, f"{name}:~epoch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--single", type=int, default=5_000, help="jobs enqueued one by one")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=50, help="workers per process")
    parser.add_argument(
        "--floor-loops", type=int, default=8, help="concurrent loops per floor process"
    )
    args = parser.parse_args()
    jobs = args.jobs - args.jobs % 1000

    kyu_q, floor_q = new_queue_name("kyu"), new_queue_name("floor")
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    try:
        results["enqueue"] = trio.run(enqueue_figures, kyu_q, jobs, args.single)
        results["kyu"] = run_workers("bench._kyu_worker", kyu_q, args.processes, args.workers, jobs)
        results["enqueue"]["single_floor_per_s"] = single_enqueue_floor(
            floor_q + "-single", args.single
        )
        trio.run(enqueue_figures, floor_q, jobs, 0)
        results["floor"] = run_workers(
            "bench.floor", floor_q, args.processes, args.floor_loops, jobs
        )
    finally:
        cleanup(kyu_q, kyu_q + "-single", floor_q, floor_q + "-single")
    kyu, floor, enq = results["kyu"], results["floor"], results["enqueue"]
    results["kyu_fraction_of_floor"] = kyu["jobs_per_s"] / floor["jobs_per_s"]
    summary = "\n".join(
        [
            f"# Throughput ({jobs} no-op jobs, "
            f"{args.processes} processes x {args.workers} workers)",
            "",
            f"| figure | kyu-trio | floor ({args.floor_loops} concurrent bare batch loops "
            "per process, no job body; the full curve: `python -m bench.floor --curve`) |",
            "|---|---|---|",
            f"| single enqueue jobs/s | {enq['single_enqueue_per_s']:,.0f} | "
            f"{enq['single_floor_per_s']:,.0f} (INSERT + ZADD, blocking) |",
            f"| bulk enqueue jobs/s | {enq['bulk_enqueue_per_s']:,.0f} | |",
            f"| processed jobs/s | {kyu['jobs_per_s']:,.0f} | {floor['jobs_per_s']:,.0f} |",
            f"| worker CPU s / 1k jobs | {kyu['worker_cpu_s_per_1k']:.3f} | "
            f"{floor['worker_cpu_s_per_1k']:.3f} |",
            f"| PostgreSQL CPU s / 1k jobs | {kyu['postgres_cpu_s_per_1k']:.3f} | "
            f"{floor['postgres_cpu_s_per_1k']:.3f} |",
            f"| Redis CPU s / 1k jobs | {kyu['redis_cpu_s_per_1k']:.3f} | "
            f"{floor['redis_cpu_s_per_1k']:.3f} |",
            "",
            f"kyu-trio processed {results['kyu_fraction_of_floor']:.0%} of the floor's rate.",
            "Reproduce: `.venv/bin/python -m bench.throughput "
            f"--jobs {args.jobs} --processes {args.processes} --workers {args.workers} "
            f"--floor-loops {args.floor_loops}`",
        ]
    )
    write_results("throughput", results, summary)


if __name__ == "__main__":
    main()
