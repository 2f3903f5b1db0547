"""arq (Redis only, asyncio). Workers: ``arq.worker.run_worker(WorkerSettings)`` with
``max_jobs`` = PEER_CONCURRENCY concurrent jobs per process (arq's default is 10), logging at
WARNING (arq's CLI logs every job at INFO and has no switch for that).

arq has no bulk enqueue API: the served queue is filled one ``enqueue_job`` at a time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import _peer_common as pc
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import run_worker

REDIS_SETTINGS = RedisSettings.from_dsn(pc.REDIS_URL)
QUEUE_NAME = f"arq:{pc.QUEUE}"
SINGLE_QUEUE_NAME = f"arq:{pc.SINGLE_QUEUE}"


async def noop(ctx: dict[str, Any]) -> None:
    await pc.aincr()


class WorkerSettings:
    functions = [noop]
    redis_settings = REDIS_SETTINGS
    queue_name = QUEUE_NAME
    max_jobs = pc.CONCURRENCY


async def enqueue(single: int, jobs: int, batch: int) -> dict[str, float | None]:
    pool = await create_pool(REDIS_SETTINGS)
    try:
        started = time.perf_counter()
        for _ in range(single):
            await pool.enqueue_job("noop", _queue_name=SINGLE_QUEUE_NAME)
        single_rate = single / (time.perf_counter() - started)
        for _ in range(jobs):
            await pool.enqueue_job("noop", _queue_name=QUEUE_NAME)
    finally:
        await pool.aclose()
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": None}


def worker() -> None:
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)  # type: ignore[arg-type]
