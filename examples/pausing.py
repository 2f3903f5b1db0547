"""Pausing a queue: running jobs finish, nothing new starts until it is resumed, and
enqueues are still accepted::

    .venv/bin/python examples/pausing.py

It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0`` unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the
queue ``kyu:exports`` unless KYU_QUEUE says otherwise.
"""

from __future__ import annotations

import os

import trio

from kyu_trio import Config, Queue


def config() -> Config:
    defaults = {
        "dsn": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
        "queue_name": "kyu:exports",
    }
    set_by_env = {"dsn": "KYU_DSN", "redis_url": "KYU_REDIS_URL", "queue_name": "KYU_QUEUE"}
    overrides = {k: v for k, v in defaults.items() if not os.environ.get(set_by_env[k])}
    return Config.from_env(**overrides, metrics_port=0)


async def main() -> None:
    queue = Queue(config())
    done = []

    @queue.handler("export")
    async def export(payload: int) -> None:
        done.append(payload)

    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        # [pause]
        await queue.pause()  # every process serving the queue stops taking its jobs
        await queue.enqueue("export", 1)  # still accepted: it waits
        await trio.sleep(2)
        print("paused:", await queue.is_paused(), "- exported while paused:", done)
        await queue.resume()  # within a second, the workers take jobs again
        # [/pause]
        while not done:  # noqa: ASYNC110 (an example: a plain poll reads best)
            await trio.sleep(0.1)
        print("resumed - exported:", done)
        queue.shutdown()


if __name__ == "__main__":
    trio.run(main)
