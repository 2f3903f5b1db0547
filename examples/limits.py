"""Fleet-wide limits per job type: at most 2 ``call_partner_api`` jobs run at once and at
most 5 start per second, across every process serving the queue, while other job types
run past the waiting ones::

    .venv/bin/python examples/limits.py

It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0`` unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the
queue ``kyu:partners`` unless KYU_QUEUE says otherwise.
"""

from __future__ import annotations

import os

import trio

from kyu_trio import Config, Queue


def config() -> Config:
    defaults = {
        "dsn": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
        "queue_name": "kyu:partners",
    }
    set_by_env = {"dsn": "KYU_DSN", "redis_url": "KYU_REDIS_URL", "queue_name": "KYU_QUEUE"}
    overrides = {k: v for k, v in defaults.items() if not os.environ.get(set_by_env[k])}
    return Config.from_env(**overrides, metrics_port=0, workers=20)


async def main() -> None:
    queue = Queue(config())
    running = most = 0
    finished: list[str] = []

    # [limits]
    @queue.handler("call_partner_api", concurrency=2, rate_limit=(5, 1.0))
    async def call_partner_api(payload: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(0.2)  # the partner's API call
        running -= 1
        finished.append("api")

    @queue.handler("send_receipt")  # no limit: never waits behind the API calls
    async def send_receipt(payload: int) -> None:
        finished.append("receipt")

    # [/limits]

    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        await queue.enqueue_many([("call_partner_api", i) for i in range(10)])
        await queue.enqueue_many([("send_receipt", i) for i in range(10)])
        while len(finished) < 20:  # noqa: ASYNC110 (an example: a plain poll reads best)
            await trio.sleep(0.1)
        print("most API calls at once:", most)
        print("receipts all sent before the last API call:", finished[-1] == "api")
        queue.shutdown()


if __name__ == "__main__":
    trio.run(main)
