"""huey (Redis storage). Workers: `huey_consumer huey_app.huey --worker-type process
--workers PEER_CONCURRENCY` per worker process (huey's docs: process workers for using the
cores; blocking dequeue, the RedisHuey default).

huey has no bulk enqueue API: the served queue is filled one task call at a time.
"""

from __future__ import annotations

import time

import _peer_common as pc
from huey import RedisHuey

huey = RedisHuey(pc.QUEUE, url=pc.REDIS_URL)
single_huey = RedisHuey(pc.SINGLE_QUEUE, url=pc.REDIS_URL)


@huey.task()
def noop() -> None:
    pc.incr()


@single_huey.task()
def noop_single() -> None:
    pc.incr()


def enqueue(single: int, jobs: int, batch: int) -> dict[str, float | None]:
    started = time.perf_counter()
    for _ in range(single):
        noop_single()
    single_rate = single / (time.perf_counter() - started)
    for _ in range(jobs):
        noop()
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": None}
