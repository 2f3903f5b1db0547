"""rq (Redis only). Workers: `rq worker --worker-class rq.worker.SimpleWorker` (see peers.py).

Bulk enqueue: ``Queue.enqueue_many`` with ``Queue.prepare_data``, one pipeline per batch.
"""

from __future__ import annotations

import time

import _peer_common as pc
from redis import Redis
from rq import Queue


def noop() -> None:
    pc.incr()


def enqueue(single: int, jobs: int, batch: int) -> dict[str, float | None]:
    conn = Redis.from_url(pc.REDIS_URL)
    single_queue = Queue(pc.SINGLE_QUEUE, connection=conn)
    queue = Queue(pc.QUEUE, connection=conn)
    started = time.perf_counter()
    for _ in range(single):
        single_queue.enqueue(noop)
    single_rate = single / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(jobs // batch):
        queue.enqueue_many([Queue.prepare_data(noop) for _ in range(batch)])
    return {
        "single_enqueue_per_s": single_rate,
        "bulk_enqueue_per_s": jobs / (time.perf_counter() - started),
    }
