"""procrastinate (PostgreSQL, asyncio; psycopg 3 connector). Workers: `procrastinate worker
--concurrency PEER_CONCURRENCY --queues bench` (procrastinate's default concurrency is 1; its
docs say to raise it for I/O-bound jobs); LISTEN/NOTIFY on (the default).

Bulk enqueue: ``Task.batch_defer_async``, one statement per batch.
"""

from __future__ import annotations

import time

import _peer_common as pc
from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=pc.DSN))


@app.task(name="noop", queue=pc.QUEUE)
async def noop() -> None:
    await pc.aincr()


async def setup() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def enqueue(single: int, jobs: int, batch: int) -> dict[str, float | None]:
    async with app.open_async():
        single_deferrer = noop.configure(queue=pc.SINGLE_QUEUE)
        started = time.perf_counter()
        for _ in range(single):
            await single_deferrer.defer_async()
        single_rate = single / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(jobs // batch):
            await noop.batch_defer_async(*([{}] * batch))
        bulk_rate = jobs / (time.perf_counter() - started)
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": bulk_rate}
