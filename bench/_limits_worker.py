"""A kyu-trio worker process for `bench.limits`: `bench._kyu_worker`'s no-op job and
settings, with the type's limits (and optionally a sleep) from the command line; serves
until SIGTERM. With ``--times DIR``, writes the wall-clock (entry, exit) times of its
handler's runs to ``DIR/<pid>.json`` when it stops.

    python -m bench._limits_worker QUEUE WORKERS [--concurrency N] [--rate COUNT PER]
                                                 [--sleep SECONDS] [--times DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import trio

from kyu_trio import Config, Queue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("queue_name")
    parser.add_argument("workers", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--rate", nargs=2, metavar=("COUNT", "PER"))
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each job sleeps")
    parser.add_argument("--times", type=Path, help="directory for the handler's run times")
    args = parser.parse_args()
    queue = Queue(
        Config.from_env(
            queue_name=args.queue_name,
            workers=args.workers,
            metrics_port=0,
            shutdown_grace=1.0,
            pool_size=4,
        )
    )
    rate = (int(args.rate[0]), float(args.rate[1])) if args.rate else None
    pause = args.sleep
    runs: list[tuple[float, float]] = []

    @queue.handler("noop", concurrency=args.concurrency, rate_limit=rate)
    async def noop(payload: str) -> None:
        entered = time.time()
        if pause:
            await trio.sleep(pause)
        if args.times:
            runs.append((entered, time.time()))

    try:
        trio.run(queue.serve)
    finally:
        if args.times:
            (args.times / f"{os.getpid()}.json").write_text(json.dumps(runs))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
