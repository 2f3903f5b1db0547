"""kyu_trio.testing and the plugin's in-memory fixture: no servers."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio
import trio.testing

from kyu_trio import Config, Job, JobStatus, KyuError, Queue, SystemClock, TrioClock
from kyu_trio.testing import drain, in_memory, memory_queue

# What an app module holds: a queue on real servers, built at import time (nothing
# connects until it is used).
APP_CONFIG = Config(
    dsn="postgresql://app@db.invalid/app",
    redis_url="redis://cache.invalid/0",
    queue_name="app",
    metrics_port=9100,
)


def summary(jobs: list[Job]) -> list[tuple[str, str, int]]:
    return [(j.job_type, j.payload, j.attempt) for j in jobs]


async def test_memory_queue_runs_jobs_without_servers() -> None:
    queue = memory_queue(Config(queue_name="mine", workers=1))
    seen: list[str] = []

    @queue.handler("echo")
    async def echo(payload: str) -> None:
        seen.append(payload)

    async with queue:
        ids = [await queue.enqueue("echo", p) for p in ("a", "b", "c")]
        ran = await drain(queue)
        assert [(await queue.inspect(i)).status for i in ids] == [JobStatus.COMPLETED] * 3
    assert summary(ran) == [("echo", "a", 1), ("echo", "b", 1), ("echo", "c", 1)]
    assert [j.id for j in ran] == ids and seen == ["a", "b", "c"]
    assert queue.config.queue_name == "mine" and queue.config.workers == 1
    assert queue.config.metrics_port == 0  # serve() binds no port
    assert isinstance(queue._clock, TrioClock)
    assert await drain(queue) == []  # nothing left; connects by itself


async def test_memory_queues_share_nothing() -> None:
    first, second = memory_queue(), memory_queue()
    first.register("noop", _noop)
    second.register("noop", _noop)
    async with first, second:
        await first.enqueue("noop", "1")
        assert await drain(second) == []
        assert len(await drain(first)) == 1


async def test_memory_queue_takes_a_clock() -> None:
    assert isinstance(memory_queue(clock=SystemClock())._clock, SystemClock)


async def _noop(payload: str) -> None:
    await trio.lowlevel.checkpoint()


async def test_drain_runs_jobs_handlers_enqueue() -> None:
    queue = memory_queue()

    @queue.handler("countdown")
    async def countdown(payload: str) -> None:
        if int(payload) > 0:
            await queue.enqueue("countdown", str(int(payload) - 1))

    async with queue:
        await queue.enqueue("countdown", "3")
        ran = await drain(queue)
    assert [j.payload for j in ran] == ["3", "2", "1", "0"]


async def test_drain_leaves_jobs_due_later_until_the_clock_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retries and scheduled jobs run in the drain after they fall due, with no real wait."""
    queue = memory_queue(Config(max_backoff=60.0))
    attempts: list[int] = []

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    queue.register("later", _noop)
    async with queue:
        retried = await queue.enqueue("flaky", "x")
        later = await queue.enqueue(
            "later", "y", scheduled_at=queue._clock.now() + timedelta(hours=2)
        )
        assert summary(await drain(queue)) == [("flaky", "x", 1)]
        assert (await queue.inspect(retried)).status is JobStatus.FAILED  # its retry waits
        started = trio.current_time()
        await trio.sleep(61)  # MockClock: no real wait
        assert summary(await drain(queue)) == [("flaky", "x", 2)]
        assert (await queue.inspect(retried)).status is JobStatus.COMPLETED
        assert (await queue.inspect(later)).status is JobStatus.SCHEDULED
        await trio.sleep(2 * 3600)
        assert summary(await drain(queue)) == [("later", "y", 1)]
    assert trio.current_time() - started >= 2 * 3600 + 61


async def test_in_memory_tests_an_app_queue_and_gives_it_back() -> None:
    queue = Queue(APP_CONFIG)
    seen: list[str] = []

    @queue.handler("welcome")
    async def welcome(payload: str) -> None:
        seen.append(payload)

    metrics = queue.metrics
    with in_memory(queue) as same:
        assert same is queue
        assert queue.config.metrics_port == 0 and queue.config.queue_name == "app"
        async with queue:
            await queue.enqueue("welcome", "7")
            assert summary(await drain(queue)) == [("welcome", "7", 1)]
    assert seen == ["7"]
    assert queue.config is APP_CONFIG and queue.metrics is metrics
    assert queue._given_store is None and queue._given_broker is None
    assert not isinstance(queue._clock, TrioClock)
    with in_memory(queue):  # a new block starts empty
        assert await drain(queue) == []


async def test_in_memory_restores_after_a_failing_test() -> None:
    queue = Queue(APP_CONFIG)
    with pytest.raises(ZeroDivisionError), in_memory(queue):
        async with queue:
            1 / 0  # noqa: B018
    assert queue.config is APP_CONFIG and queue._given_store is None


async def test_in_memory_refuses_a_connected_queue_and_nesting() -> None:
    queue = memory_queue()
    async with queue:
        with pytest.raises(KyuError, match="is connected: close it first"), in_memory(queue):
            pass
    with in_memory(queue):
        with pytest.raises(KyuError, match="may not nest"), in_memory(queue):
            pass
        assert await drain(queue) == []  # the outer block still works


async def test_leaving_in_memory_connected_is_an_error() -> None:
    queue = Queue(APP_CONFIG)
    with pytest.raises(KyuError, match="still connected on leaving in_memory"), in_memory(queue):
        await queue.connect()
    await queue.close()


def test_in_memory_works_in_a_sync_test() -> None:
    """The block itself needs no event loop: a sync fixture can hold it around the test."""
    queue = Queue(APP_CONFIG)
    queue.register("noop", _noop)

    async def main() -> list[Job]:
        async with queue:
            await queue.enqueue("noop", "1")
            return await drain(queue)

    with in_memory(queue):
        assert len(trio.run(main)) == 1


async def test_plugin_memory_queue_fixture(kyu_memory_queue: Queue) -> None:
    kyu_memory_queue.register("noop", _noop)
    async with kyu_memory_queue:
        await kyu_memory_queue.enqueue("noop", "1")
        assert summary(await drain(kyu_memory_queue)) == [("noop", "1", 1)]
    assert kyu_memory_queue.config.metrics_port == 0
