"""pgqueuer (PostgreSQL, asyncio; asyncpg driver). Workers: ``pgqueuer.run(main,
batch_size=PEER_CONCURRENCY)`` on uvloop, which is what `pgq run pgqueuer_app:main --batch-size
N` runs (pgqueuer's default batch size is 10; the jobs of a batch run concurrently, with no
global cap by default). With PEER_DEFAULTS=1, ``pgqueuer.run(main)``: every setting pgqueuer's
own default, for bench/peers.py's comparison of defaults.

Bulk enqueue: ``Queries.enqueue`` with lists, one statement per batch. Single-enqueue jobs go
to the entrypoint ``noop_single``, which no worker registers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import _peer_common as pc
import asyncpg
import pgqueuer
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    """The factory (pgqueuer 1.6 wants an async context manager)."""
    connection = await asyncpg.connect(pc.DSN)
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        await pc.aincr()

    try:
        yield pgq
    finally:
        await connection.close()


async def setup() -> None:
    connection = await asyncpg.connect(pc.DSN)
    try:
        await Queries(AsyncpgDriver(connection)).install()
    finally:
        await connection.close()


async def enqueue(single: int, jobs: int, batch: int) -> dict[str, float | None]:
    connection = await asyncpg.connect(pc.DSN)
    try:
        queries = Queries(AsyncpgDriver(connection))
        started = time.perf_counter()
        for _ in range(single):
            await queries.enqueue("noop_single", None)
        single_rate = single / (time.perf_counter() - started)
        entrypoints, payloads, priorities = ["noop"] * batch, [None] * batch, [0] * batch
        started = time.perf_counter()
        for _ in range(jobs // batch):
            await queries.enqueue(entrypoints, payloads, priorities)
        bulk_rate = jobs / (time.perf_counter() - started)
    finally:
        await connection.close()
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": bulk_rate}


def worker() -> None:
    # Left out, batch_size takes pgqueuer's own default, whatever that is in the pinned version.
    settings = {} if pc.DEFAULTS else {"batch_size": pc.CONCURRENCY}
    try:
        import uvloop
    except ImportError:
        asyncio.run(pgqueuer.run(main, **settings))
    else:
        uvloop.run(pgqueuer.run(main, **settings))
