"""Helpers for testing an app that uses kyu-trio, without PostgreSQL or Redis.

- `memory_queue` makes a `Queue` on the in-memory store and broker;
- `in_memory` puts an existing queue (your app's module-level ``queue``) on them for the
  duration of a ``with`` block;
- `drain` runs every job that is due now and returns them, in the order they ran.

The in-memory adapters keep the same conditional transitions as PostgreSQL and Redis
(the same conformance suite runs against both), so a handler that works here works there.
Time comes from trio's clock (`TrioClock`), so under `trio.testing.MockClock` retries and
scheduled jobs fall due when the test moves the clock, not after real waits.

The pytest plugin (`kyu_trio.pytest_plugin`, loaded by pytest wherever kyu-trio is
installed) adds fixtures built on these, and one on throwaway real servers.

Example::

    from myapp import queue  # queue = Queue(Config.from_env()) with its handlers
    from kyu_trio.testing import drain, in_memory

    async def test_welcome_email_is_sent() -> None:
        with in_memory(queue):
            async with queue:
                await queue.enqueue("send_welcome", '{"user": 7}')
                ran = await drain(queue)
        assert [job.job_type for job in ran] == ["send_welcome"]
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

from ._broker._memory import MemoryBroker
from ._clock import Clock, TrioClock
from ._config import Config
from ._errors import KyuError
from ._job import Job
from ._runtime._queue import Queue
from ._store._memory import MemoryStore

__all__ = ["drain", "in_memory", "memory_queue"]

# Queues inside an in_memory() block, to refuse nesting (the saved adapters would be the
# memory ones).
_IN_MEMORY: weakref.WeakSet[Queue] = weakref.WeakSet()


def _memory_config(config: Config | None) -> Config:
    # No metrics port: a test that calls serve() must not bind the app's port (two tests
    # in parallel would collide, and a running app would be in the way).
    return attrs.evolve(config if config is not None else Config(), metrics_port=0)


def memory_queue(config: Config | None = None, *, clock: Clock | None = None) -> Queue:
    """A `Queue` on a new `MemoryStore` and `MemoryBroker`: no servers, nothing shared
    with any other queue.

    ``config`` defaults to ``Config()``; either way its ``metrics_port`` is set to 0 (no
    metrics server), its other settings (``queue_name``, ``workers``, timeouts, retries)
    are kept. ``clock`` defaults to `TrioClock`: the wall time is derived from trio's
    clock, so `trio.testing.MockClock` drives due times (and the queue is used inside
    ``trio.run``, as pytest-trio tests are). Pass `SystemClock` for the host's time.

    Example::

        queue = memory_queue()

        @queue.handler("add")
        async def add(payload: str) -> None: ...

        async with queue:
            await queue.enqueue("add", "1 2")
            assert len(await drain(queue)) == 1
    """
    config = _memory_config(config)
    return Queue(
        config,
        store=MemoryStore(attempts_kept=config.max_attempts_kept),
        broker=MemoryBroker(),
        clock=clock if clock is not None else TrioClock(),
    )


@contextmanager
def in_memory(queue: Queue, *, clock: Clock | None = None) -> Iterator[Queue]:
    """Put ``queue`` on a new in-memory store and broker (and `TrioClock`, or ``clock``)
    inside the ``with`` block, and give it back its own adapters, clock and config on
    leaving. Its handlers and middleware stay as registered: this is how an app's
    module-level ``queue`` is tested as it is.

    The queue must not be connected on entering: a connected queue holds its servers'
    connections, which this would leak, so it raises `KyuError` (close it first); and it
    must be closed again before the block ends (use ``async with queue:`` inside it), or
    leaving raises `KyuError`. Its ``metrics_port`` is 0 inside the block (no metrics
    server). Blocks may not nest on one queue.

    Example::

        from myapp import queue

        async def test_signup() -> None:
            with in_memory(queue):
                async with queue:
                    await queue.enqueue("send_welcome", "7")
                    assert [j.job_type for j in await drain(queue)] == ["send_welcome"]
    """
    if queue.connected:
        raise KyuError(
            f"{queue!r} is connected: close it first (leave its `async with queue:` block), "
            "so that its connections to the servers are not left open"
        )
    if queue in _IN_MEMORY:
        raise KyuError(f"{queue!r} is in memory already: in_memory() blocks may not nest")
    saved = (queue._given_store, queue._given_broker, queue._clock, queue.config, queue.metrics)
    queue._given_store = MemoryStore(attempts_kept=queue.config.max_attempts_kept)
    queue._given_broker = MemoryBroker()
    queue._clock = clock if clock is not None else TrioClock()
    queue.config = _memory_config(queue.config)
    _IN_MEMORY.add(queue)
    failed = True
    try:
        yield queue
        failed = False
    finally:
        _IN_MEMORY.discard(queue)
        queue._given_store, queue._given_broker, queue._clock = saved[:3]
        if not queue.connected:
            queue.config = saved[3]
            # The config setter made new metrics; the app's own come back, samples and all.
            queue.metrics = saved[4]
        elif not failed:
            # Closing is async and this exit is not: the test must close the queue itself.
            raise KyuError(
                f"{queue!r} is still connected on leaving in_memory(): connect it with "
                "`async with queue:` inside the block, so that it is closed before the block "
                "ends"
            )


async def drain(queue: Queue) -> list[Job]:
    """Run every job of ``queue`` that is due now until none is left, and return the
    jobs that ran, in the order their runs finished: each as `Queue.run_once` recorded
    it, as it was when it ran (status ``running``, its ``attempt``); a job that ran twice
    (a failure, then its retry) is there twice. ``await queue.inspect(job.id)`` tells
    where a job is now.

    It calls `Queue.run_once` until a call runs nothing: scheduled jobs and retries whose
    time has come are promoted and run, and so are jobs that handlers enqueue. Jobs due
    later are left alone: move the clock (``await trio.sleep(delay)`` under
    ``trio.testing.MockClock(autojump_threshold=0)``, pytest-trio's ``autojump_clock``)
    and drain again. A handler that enqueues a job every time it runs keeps the queue
    from ever emptying, so drain (as run_once) does not return. Connects for the duration
    if the queue is not connected.

    Example::

        async with queue:
            await queue.enqueue("flaky", "x")
            first = await drain(queue)       # fails once; its retry is due later
            await trio.sleep(60)             # under MockClock: no real wait
            second = await drain(queue)      # the retry runs
    """
    if not queue.connected:
        async with queue:
            return await drain(queue)
    ran: list[Job] = []
    while True:
        summary = await queue.run_once()
        if not summary.ran:
            return ran
        ran.extend(summary.ran)
