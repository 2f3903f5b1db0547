"""saq (Redis only, asyncio). Workers: the `saq` CLI on ``settings`` with ``concurrency`` =
PEER_CONCURRENCY concurrent jobs per process (saq's default is 10); the CLI logs at ERROR.

saq has no bulk enqueue API (``Queue.map`` enqueues one by one and waits for the results):
the served queue is filled one ``enqueue`` at a time.
"""

from __future__ import annotations

import time
from typing import Any

import _peer_common as pc
from saq import Queue

queue = Queue.from_url(pc.REDIS_URL, name=pc.QUEUE)


async def noop(ctx: dict[str, Any]) -> None:
    await pc.aincr()


settings = {"queue": queue, "functions": [noop], "concurrency": pc.CONCURRENCY}


async def enqueue(single: int, jobs: int, batch: int) -> dict[str, float | None]:
    single_queue = Queue.from_url(pc.REDIS_URL, name=pc.SINGLE_QUEUE)
    await single_queue.connect()
    await queue.connect()
    try:
        started = time.perf_counter()
        for _ in range(single):
            await single_queue.enqueue("noop")
        single_rate = single / (time.perf_counter() - started)
        for _ in range(jobs):
            await queue.enqueue("noop")
    finally:
        await single_queue.disconnect()
        await queue.disconnect()
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": None}
