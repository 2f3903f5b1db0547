"""`serve_queues`: several queues in one process, on the in-memory adapters in virtual
time. They serve together, stop together (one signal watcher for all), and a crash of
one fails the call."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from kyu_trio import (
    Config,
    ConfigError,
    JobStatus,
    KyuConnectionError,
    MemoryBroker,
    MemoryStore,
    Queue,
    serve_queues,
)
from kyu_trio._runtime._serve import metrics_routes

from .conftest import Harness


def two_queues(harness: Harness, **overrides: Any) -> tuple[Queue, Queue]:
    return harness.queue(queue_name="a", **overrides), harness.queue(queue_name="b", **overrides)


async def test_two_queues_run_their_jobs_and_stop_together(
    autojump_clock: Any, harness: Harness
) -> None:
    a, b = two_queues(harness)
    ran: list[tuple[str, str]] = []

    @a.handler("t")
    async def in_a(payload: str) -> None:
        await trio.sleep(1)
        ran.append(("a", payload))

    @b.handler("t")
    async def in_b(payload: str) -> None:
        await trio.sleep(1)
        ran.append(("b", payload))

    async with a, b:
        ids = [await q.enqueue("t", str(i)) for q in (a, b) for i in range(5)]
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_queues, a, b)
            assert a._serving is not None and b._serving is not None
            await trio.sleep(10)
            b.shutdown()  # one queue's shutdown() stops both
        assert a._serving is None and b._serving is None
        jobs = [await a.inspect(i) for i in ids]
    assert sorted(ran) == sorted((q, str(i)) for q in "ab" for i in range(5))
    assert {j.status for j in jobs} == {JobStatus.COMPLETED}
    assert {j.queue for j in jobs} == {"a", "b"}


async def test_one_signal_stops_every_queue_gracefully_and_a_second_requeues(
    autojump_clock: Any, harness: Harness, caplog: Any
) -> None:
    # Each Queue.serve on the main thread watches signals; two receivers would fight
    # (the second takes every signal from the first) and one queue would never stop.
    assert threading.current_thread() is threading.main_thread()
    caplog.set_level(logging.WARNING, logger="kyu_trio")
    a, b = two_queues(harness, shutdown_grace=30.0)
    started = {"a": trio.Event(), "b": trio.Event()}

    async def slow(payload: str) -> None:
        started[payload].set()
        await trio.sleep(float(5))

    a.register("slow", slow)
    b.register("slow", slow)
    async with a, b:
        first = [await a.enqueue("slow", "a"), await b.enqueue("slow", "b")]
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_queues, a, b)
            for event in started.values():
                await event.wait()
            # Else the signal would end this test run rather than fail this test.
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
            signal.raise_signal(signal.SIGTERM)
        # Graceful: both running jobs finished, then both queues stopped.
        assert trio.current_time() - t0 == pytest.approx(5, abs=0.5)
        assert [(await a.inspect(i)).status for i in first] == [JobStatus.COMPLETED] * 2
        assert sum("finishing running jobs" in r.getMessage() for r in caplog.records) == 1

        started = {"a": trio.Event(), "b": trio.Event()}
        second = [await a.enqueue("slow", "a"), await b.enqueue("slow", "b")]
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_queues, a, b)
            for event in started.values():
                await event.wait()
            t1 = trio.current_time()
            signal.raise_signal(signal.SIGINT)
            await trio.sleep(0.1)
            signal.raise_signal(signal.SIGTERM)
        # The second signal: both queues requeue their running jobs at once.
        assert trio.current_time() - t1 < 1
        jobs = [await a.inspect(i) for i in second]
    assert [(j.status, j.retry_count) for j in jobs] == [(JobStatus.PENDING, 0)] * 2


class Broken(RuntimeError):
    pass


async def test_a_crash_in_one_queue_fails_the_call_and_requeues_the_others_jobs(
    autojump_clock: Any, caplog: Any
) -> None:
    # Different stores and brokers, as queues on different servers would have.
    clock = Harness().clock
    stores, brokers = [MemoryStore(), MemoryStore()], [MemoryBroker(), MemoryBroker()]
    a, b = (
        Queue(
            Config(queue_name=name, workers=2, metrics_port=0, heartbeat_interval=0.5),
            store=store,
            broker=broker,
            clock=clock,
        )
        for name, store, broker in zip("ab", stores, brokers, strict=True)
    )
    running = {"a": trio.Event(), "b": trio.Event()}

    async def hang(payload: str) -> None:
        running[payload].set()
        await trio.sleep_forever()

    a.register("hang", hang)
    b.register("hang", hang)

    async def broken(*args: Any) -> Any:
        raise Broken("a bug in b's runtime")

    async with a, b:
        ids = [await a.enqueue("hang", "a"), await b.enqueue("hang", "b")]
        # serve_queues raises the error itself (wrapped once, by this test's nursery).
        with pytest.RaisesGroup(pytest.RaisesExc(Broken, match="a bug in b's runtime")):
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_queues, a, b)
                for event in running.values():
                    await event.wait()
                stores[1].heartbeat = broken  # type: ignore[method-assign,assignment]
                await trio.sleep(30)
                pytest.fail("serve_queues did not fail")
        jobs = [await a.inspect(ids[0]), await b.inspect(ids[1])]
    # Neither queue's job is left running: a's was requeued when b's crash stopped it.
    assert [(j.status, j.retry_count) for j in jobs] == [(JobStatus.PENDING, 0)] * 2
    assert any("stopped by an unexpected error" in r.getMessage() for r in caplog.records)


async def test_a_queue_that_cannot_connect_fails_the_call_and_stops_the_others(
    autojump_clock: Any, harness: Harness
) -> None:
    a = harness.queue(queue_name="a")
    broker = MemoryBroker()

    async def refuse() -> None:
        raise KyuConnectionError("Redis at cache:6379 is unreachable")

    broker.open = refuse  # type: ignore[method-assign]
    b = Queue(
        Config(queue_name="b", metrics_port=0),
        store=MemoryStore(),
        broker=broker,
        clock=harness.clock,
    )
    with pytest.raises(KyuConnectionError, match="cache:6379"):
        await serve_queues(a, b)
    assert not a.connected and a._serving is None


async def test_one_exposition_and_readiness_over_every_queue(
    autojump_clock: Any, harness: Harness
) -> None:
    a = harness.queue(queue_name="a")
    broker = MemoryBroker()
    b = Queue(Config(queue_name="b", metrics_port=0), store=harness.store, broker=broker,
              clock=harness.clock)  # fmt: skip

    @a.handler("t")
    async def t(payload: str) -> None:
        pass

    async with a, b:
        await a.enqueue_many([("t", "1"), ("t", "2")])
        await b.enqueue("t", "3")
        routes = metrics_routes([a._context(), b._context()])
        text = (await routes["/metrics"]()).body.decode()
        assert (await routes["/readyz"]()).status == 200

        async def down() -> None:
            raise KyuConnectionError("Redis at cache:6379 is unreachable")

        broker.ping = down  # type: ignore[method-assign]
        ready = await routes["/readyz"]()
    enqueued = {
        s.labels["queue"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kyu_jobs_enqueued_total"
    }
    assert enqueued == {"a": 2, "b": 1}
    assert text.count("# TYPE kyu_jobs_enqueued_total counter") == 1
    # Each queue's registry has the process collectors: their samples appear once.
    assert text.count("\nprocess_resident_memory_bytes ") == 1
    assert ready.status == 503
    assert ready.body == b"not ready: queue 'b': Redis at cache:6379 is unreachable\n"


def test_queues_that_cannot_be_served_together_are_refused(harness: Harness) -> None:
    a = harness.queue(queue_name="a")
    twin = harness.queue(queue_name="a")
    for queues, error, message in [
        ((), ConfigError, "at least one Queue"),
        ((a, a), ConfigError, "given twice"),
        ((a, twin), ConfigError, "two of the queues are named 'a'"),
        ((a, "b"), TypeError, "takes Queue objects"),
    ]:
        with pytest.raises(error, match=message):
            trio.run(serve_queues, *queues)  # type: ignore[arg-type]
