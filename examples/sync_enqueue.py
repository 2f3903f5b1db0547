"""kyu-trio from a threaded program: enqueue with `Client` and wait for results, no trio.

Two processes, as in production: a trio worker, and a plain threaded program (a Django or
Flask app, a script) that enqueues jobs and reads their results::

    .venv/bin/python examples/sync_enqueue.py worker   # terminal 1: runs the jobs
    .venv/bin/python examples/sync_enqueue.py          # terminal 2: 4 threads enqueue

It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and ``redis://127.0.0.1:6379/0``
unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the queue ``kyu:sync`` unless
KYU_QUEUE says otherwise.
"""

from __future__ import annotations

import os
import sys
import threading

from kyu_trio import Client, Config


def config() -> Config:
    defaults = {
        "dsn": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
        "queue_name": "kyu:sync",
    }
    set_by_env = {"dsn": "KYU_DSN", "redis_url": "KYU_REDIS_URL", "queue_name": "KYU_QUEUE"}
    overrides = {k: v for k, v in defaults.items() if not os.environ.get(set_by_env[k])}
    return Config.from_env(**overrides)


def worker() -> None:
    """The worker process: trio, and the handler the client's jobs name."""
    import trio

    from kyu_trio import Queue

    queue = Queue(config())

    @queue.handler("add")
    async def add(payload: dict[str, int]) -> int:
        return payload["a"] + payload["b"]

    trio.run(queue.serve)


# [client]
def main() -> None:
    # One Client for the whole program: it is safe to share between threads.
    with Client(config()) as client:
        results: dict[int, int] = {}

        def work(thread: int) -> None:
            for i in range(5):
                n = thread * 10 + i
                job_id = client.enqueue("add", {"a": n, "b": 1000})
                results[n] = client.result(job_id, timeout=10)  # the handler's return value

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {n: n + 1000 for n in results}, results
    print(f"OK: {len(results)} results from {len(threads)} threads")


# [/client]


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        worker()
    else:
        main()  # plain threads and blocking sockets: no trio.run in this process
