"""An order row and its job in one transaction, with plain psycopg: both or neither.

The job is written through your own connection, inside your transaction, and never
committed by kyu-trio: roll back and there is neither order nor job; commit and the
serving workers pick the job up at once (the row's trigger tells them at COMMIT)::

    .venv/bin/python examples/transactional.py

A worker thread stands in for your worker processes. It connects to
``postgresql://postgres@127.0.0.1:5432/test`` and ``redis://127.0.0.1:6379/0`` unless
KYU_DSN / KYU_REDIS_URL say otherwise, and uses the queue ``kyu:orders`` unless KYU_QUEUE
says otherwise.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import trio

from kyu_trio import Client, Config, Queue


def config() -> Config:
    defaults = {
        "dsn": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
        "queue_name": "kyu:orders",
    }
    set_by_env = {"dsn": "KYU_DSN", "redis_url": "KYU_REDIS_URL", "queue_name": "KYU_QUEUE"}
    overrides = {k: v for k, v in defaults.items() if not os.environ.get(set_by_env[k])}
    return Config.from_env(**overrides)


@contextmanager
def running_worker(config: Config) -> Iterator[None]:
    """A trio worker in a thread of this process, serving ``ship_order`` jobs."""
    queue = Queue(config)

    @queue.handler("ship_order")
    async def ship_order(payload: dict[str, int]) -> str:
        return f"order {payload['order_id']} shipped"

    started = threading.Event()
    token: list[trio.lowlevel.TrioToken] = []

    async def serve() -> None:
        token.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            started.set()

    thread = threading.Thread(target=trio.run, args=(serve,))
    thread.start()
    started.wait(30)
    try:
        yield
    finally:
        if token:
            trio.from_thread.run_sync(queue.shutdown, trio_token=token[0])
        thread.join()


def create_orders_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS shop_orders (id serial PRIMARY KEY, item text NOT NULL)"
        )


def order_count(dsn: str, item: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM shop_orders WHERE item = %s", (item,)).fetchone()
    return row[0] if row else 0


# [psycopg]
def place_order(client: Client, conn: psycopg.Connection, item: str) -> str:
    """Insert the order and enqueue its job in the caller's transaction."""
    order_id = conn.execute(
        "INSERT INTO shop_orders (item) VALUES (%s) RETURNING id", (item,)
    ).fetchone()[0]
    return client.enqueue("ship_order", {"order_id": order_id}, conn=conn)


def main() -> None:
    cfg = config()
    create_orders_table(cfg.dsn)
    with Client(cfg) as client, running_worker(cfg), psycopg.connect(cfg.dsn) as conn:
        # Rolled back: neither the order nor its job exists, and nothing runs.
        job_id = place_order(client, conn, "umbrella")
        conn.rollback()
        assert order_count(cfg.dsn, "umbrella") == 0
        print("rolled back: no order, job", job_id, "does not exist")

        # Committed: both exist, and a serving worker runs the job at once.
        with conn.transaction():
            job_id = place_order(client, conn, "teapot")
        print(client.result(job_id, timeout=10))


# [/psycopg]


if __name__ == "__main__":
    main()
