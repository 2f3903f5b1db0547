"""Redis is disposable: flushed or restarted empty, every pending job still runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
import trio

from kyu_trio import Config, JobStatus, Queue
from tests.conftest import ThrowawayRedis

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["flushall", "flushdb", "restart"])
async def test_redis_loss_mid_run_loses_no_job(
    make_config: Callable[..., Config], throwaway_redis: ThrowawayRedis, how: str
) -> None:
    queue = Queue(make_config(redis_url=throwaway_redis.url, workers=2, scheduler_interval=0.2))
    done: set[str] = set()
    gate, all_done = trio.Event(), trio.Event()

    @queue.handler("t")
    async def t(payload: str) -> None:
        await gate.wait()
        done.add(payload)
        if len(done) == 50:
            all_done.set()

    async with queue:
        ids = await queue.enqueue_many([("t", str(i)) for i in range(50)])
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(0.3)  # two jobs are running, 48 wait in Redis
            client = redis.Redis(port=throwaway_redis.port)
            if how == "flushall":
                client.flushall()
            elif how == "flushdb":
                client.flushdb()
            else:
                throwaway_redis.stop()
                throwaway_redis.start()  # same port, empty
            gate.set()
            with trio.fail_after(30):
                await all_done.wait()
            queue.shutdown()
        statuses = {(await queue.inspect(i)).status for i in ids}
    assert statuses == {JobStatus.COMPLETED}


async def test_flush_between_enqueue_and_serve(
    make_config: Callable[..., Config], throwaway_redis: ThrowawayRedis
) -> None:
    queue = Queue(make_config(redis_url=throwaway_redis.url))
    done: list[str] = []

    @queue.handler("t")
    async def t(payload: str) -> None:
        done.append(payload)

    async with queue:
        await queue.run_once()
        await queue.enqueue_many([("t", str(i)) for i in range(20)])
        redis.Redis(port=throwaway_redis.port).flushall()
        await queue.run_once()
    assert sorted(done, key=int) == [str(i) for i in range(20)]


async def test_logical_database_in_url_is_honoured(
    make_config: Callable[..., Config], throwaway_redis: ThrowawayRedis
) -> None:
    url = f"redis://127.0.0.1:{throwaway_redis.port}/3"
    queue = Queue(make_config(redis_url=url))
    async with queue:
        await queue.enqueue("t", "")
    name = queue.config.queue_name
    assert redis.Redis(port=throwaway_redis.port, db=3).zcard(name) == 1
    assert redis.Redis(port=throwaway_redis.port, db=0).zcard(name) == 0
