"""dramatiq (Redis broker). Workers: `dramatiq dramatiq_app --processes 1 --threads
PEER_THREADS --queues bench` per worker process (dramatiq's defaults: one process per core,
8 threads each).

dramatiq has no bulk enqueue API (``group(...).run()`` sends message by message): the served
queue is filled one ``send`` at a time.
"""

from __future__ import annotations

import time

import _peer_common as pc
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=pc.REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=pc.QUEUE)
def noop() -> None:
    pc.incr()


@dramatiq.actor(queue_name=pc.SINGLE_QUEUE)
def noop_single() -> None:
    pc.incr()


def enqueue(single: int, jobs: int, batch: int) -> dict[str, float | None]:
    started = time.perf_counter()
    for _ in range(single):
        noop_single.send()
    single_rate = single / (time.perf_counter() - started)
    for _ in range(jobs):
        noop.send()
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": None}
