"""A kyu-trio worker for bench/peers.py whose no-op handler does what every peer's no-op job
does there: one Redis INCR on the run's counter key (PEER_COUNTER_KEY in PEER_REDIS_URL), so
kyu-trio can also be compared with that round trip included. Serves until SIGTERM."""

from __future__ import annotations

import os
import sys

import redis
import trio

from kyu_trio import Config, Queue


def main() -> None:
    queue_name, workers = sys.argv[1], int(sys.argv[2])
    counter = os.environ["PEER_COUNTER_KEY"]
    client = redis.Redis.from_url(os.environ["PEER_REDIS_URL"])
    queue = Queue(
        Config.from_env(
            queue_name=queue_name, workers=workers, metrics_port=0, shutdown_grace=1.0, pool_size=4
        )
    )

    @queue.handler("noop")
    async def noop(payload: str) -> None:
        client.incr(counter)  # one blocking round trip, as the synchronous peers' jobs do

    trio.run(queue.serve)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
