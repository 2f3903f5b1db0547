"""A kyu-trio worker for bench/latency.py: records enqueue -> handler-start in Redis.

The handler only notes the time; a separate task pushes the notes to Redis every 20 ms,
so that measuring adds no Redis round trip (and no thread hop) to each job.
"""

from __future__ import annotations

import functools
import sys
import time

import redis
import trio

from kyu_trio import Config, Queue, current_job

FLUSH_EVERY = 0.02


def main() -> None:
    queue_name, workers, results_key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    queue = Queue(
        Config.from_env(queue_name=queue_name, workers=workers, metrics_port=0, shutdown_grace=1.0)
    )
    client = redis.Redis.from_url(Config.from_env().redis_url)
    stamps: list[str] = []

    @queue.handler("stamp")
    async def stamp(payload: str) -> None:
        # Wall time, compared with the enqueuer's in another process on this machine.
        stamps.append(f"{current_job().id} {time.time():.6f}")

    async def flush_forever() -> None:
        while True:
            await trio.sleep(FLUSH_EVERY)
            if stamps:
                batch = stamps[:]
                del stamps[:]
                await trio.to_thread.run_sync(functools.partial(client.rpush, results_key, *batch))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush_forever)
            await queue.serve()
            nursery.cancel_scope.cancel()

    trio.run(run)


if __name__ == "__main__":
    main()
