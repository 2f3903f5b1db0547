"""A kyu-trio worker process for the benchmarks: no-op handler, serves until SIGTERM."""

from __future__ import annotations

import os
import sys

import trio

from kyu_trio import Config, Queue


def main() -> None:
    queue_name, workers = sys.argv[1], int(sys.argv[2])
    queue = Queue(
        Config.from_env(
            queue_name=queue_name, workers=workers, metrics_port=0, shutdown_grace=1.0, pool_size=4
        )
    )

    @queue.handler("noop")
    async def noop(payload: str) -> None:
        pass

    trio.run(queue.serve)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
