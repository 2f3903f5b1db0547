"""A worker process for bench/soak.py: a no-op handler, serves one queue until SIGTERM.

Usage: python -m bench._soak_worker QUEUE WORKERS   (KYU_DSN / KYU_REDIS_URL from the env)
Prints ``ready <worker id>`` once it is serving.
"""

from __future__ import annotations

import sys

import trio

from kyu_trio import Config, Queue


def main() -> None:
    queue_name, workers = sys.argv[1], int(sys.argv[2])
    queue = Queue(
        Config.from_env(queue_name=queue_name, workers=workers, metrics_port=0, shutdown_grace=5.0)
    )

    @queue.handler("noop")
    async def noop(payload: str) -> None:
        pass

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            print("ready", queue.worker_id, flush=True)
        print("serve returned", flush=True)

    trio.run(serve)


if __name__ == "__main__":
    main()
