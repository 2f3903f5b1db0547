"""Unique jobs: one unfinished job per key, however often (or from wherever) it is
enqueued::

    .venv/bin/python examples/unique_jobs.py

It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0`` unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the
queue ``kyu:reports`` unless KYU_QUEUE says otherwise.
"""

from __future__ import annotations

import os

import trio

from kyu_trio import Client, Config, EnqueueRequest, Queue


def config() -> Config:
    defaults = {
        "dsn": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
        "queue_name": "kyu:reports",
    }
    set_by_env = {"dsn": "KYU_DSN", "redis_url": "KYU_REDIS_URL", "queue_name": "KYU_QUEUE"}
    overrides = {k: v for k, v in defaults.items() if not os.environ.get(set_by_env[k])}
    return Config.from_env(**overrides)


async def work_off(config: Config) -> None:
    """Stands in for your workers: run what is ready now."""
    queue = Queue(config)

    @queue.handler("rebuild_report")
    async def rebuild_report(payload: dict[str, str]) -> None:
        print("rebuilt the report of", payload["day"])

    await queue.run_once()


def main() -> None:
    # [enqueue]
    with Client(config()) as client:
        day = {"day": "2026-01-31"}
        first = client.enqueue("rebuild_report", day, unique_key="report:2026-01-31")
        # Still pending: nothing is written, and the id is that of the waiting job.
        again = client.enqueue("rebuild_report", day, unique_key="report:2026-01-31")
        assert again == first
        # Per item in a batch too: both items get the id of the one waiting job.
        ids = client.enqueue_many(
            [
                EnqueueRequest("rebuild_report", day, unique_key="report:2026-01-31"),
                EnqueueRequest("rebuild_report", day, unique_key="report:2026-01-31"),
            ]
        )
        assert ids == [first, first]

        trio.run(work_off, client.config)  # the job completes: its key is free again
        later = client.enqueue("rebuild_report", day, unique_key="report:2026-01-31")
        assert later != first
        print("one job per key while it waits; a new one once it has completed")
    # [/enqueue]


if __name__ == "__main__":
    main()
