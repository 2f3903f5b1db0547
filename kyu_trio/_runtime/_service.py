"""What the runtime's services share: the context they run in, the ticker that runs a
maintenance service's pass again and again, and pushing to the broker without failing.

Each maintenance service (scheduler, reaper, sampler) is one class with ``run_once()``,
which does one pass and returns what it did, and ``run()``, which hands ``run_once`` to
`ticker`. Tests and `Queue.run_once` call ``run_once`` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import attrs
import trio

from .._clock import Clock
from .._errors import KyuConnectionError
from .._ports import Broker, Ready, Store
from ._metrics import Metrics
from ._outage import Outage


@attrs.frozen
class Context:
    """One queue's adapters, clock, logger and metrics, as every service uses them."""

    queue: str
    store: Store
    broker: Broker
    clock: Clock
    log: logging.Logger
    metrics: Metrics

    async def push_or_log(self, ready: Sequence[Ready], queue: str | None = None) -> None:
        """Push ``ready`` (of ``queue``, this one by default) to the broker; if the broker
        is unreachable, log it and go on: the rows are committed, and the reaper's sweep
        pushes what the broker lacks."""
        try:
            await self.broker.push(self.queue if queue is None else queue, ready)
        except KyuConnectionError as exc:
            self.push_failed(len(ready), exc)

    def push_failed(self, count: int, exc: KyuConnectionError) -> None:
        """The one log line for jobs committed but not pushed."""
        self.log.warning("could not push %d jobs to Redis (%s); the resync sweep will", count, exc)


async def ticker(
    run_once: Callable[[], Awaitable[object]],
    interval: float,
    outage: Outage | None = None,
    *,
    first_after_interval: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Call ``run_once`` every ``interval`` seconds, forever (until cancelled).

    With an ``outage``, a pass that fails with `KyuConnectionError` is tried again after
    the outage's backoff (logged once per outage) instead of a whole interval later;
    without one, the error propagates. ``first_after_interval`` waits one interval
    before the first pass.

    Example::

        await nursery.start(ticker, scheduler.run_once, 1.0, Outage(log, "scheduler"))
    """
    task_status.started()
    if first_after_interval:
        await trio.sleep(interval)
    while True:
        try:
            await run_once()
        except KyuConnectionError as exc:
            if outage is None:
                raise
            await outage.wait(exc)
            continue
        if outage is not None:
            outage.recovered()
        await trio.sleep(interval)
