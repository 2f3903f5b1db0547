"""celery (Redis broker, no result backend). Workers: `celery worker --pool prefork
--concurrency PEER_CONCURRENCY --queues bench` per worker process; settings from celery's
"Optimizing" guide for many short tasks: results ignored, rate limits disabled, a large
prefetch multiplier; acks_late stays at its default (off).

celery has no bulk enqueue API (a group publishes message by message): the served queue is
filled one ``delay()`` at a time.
"""

from __future__ import annotations

import os
import time

import _peer_common as pc
from celery import Celery

app = Celery("celery_app", broker=pc.REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=pc.QUEUE,
    worker_disable_rate_limits=True,
    worker_prefetch_multiplier=int(os.environ.get("PEER_PREFETCH_MULTIPLIER", "64")),
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop() -> None:
    pc.incr()


def enqueue(single: int, jobs: int, batch: int) -> dict[str, float | None]:
    started = time.perf_counter()
    for _ in range(single):
        noop.apply_async(queue=pc.SINGLE_QUEUE)
    single_rate = single / (time.perf_counter() - started)
    for _ in range(jobs):
        noop.delay()
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": None}
