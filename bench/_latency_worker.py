"""A kyu-trio worker for bench/latency.py: records enqueue -> handler-start in Redis."""

from __future__ import annotations

import sys
import time

import redis
import trio

from kyu_trio import Config, Queue, current_job


def main() -> None:
    queue_name, workers, results_key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    queue = Queue(
        Config.from_env(queue_name=queue_name, workers=workers, metrics_port=0, shutdown_grace=1.0)
    )
    client = redis.Redis.from_url(Config.from_env().redis_url)

    @queue.handler("stamp")
    async def stamp(payload: str) -> None:
        # Wall time, compared with the enqueuer's in another process on this machine.
        started = time.time()
        await trio.to_thread.run_sync(
            client.rpush, results_key, f"{current_job().id} {started:.6f}"
        )

    trio.run(queue.serve)


if __name__ == "__main__":
    main()
