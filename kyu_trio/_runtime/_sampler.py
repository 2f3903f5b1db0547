"""The sampler: what describes the whole queue (depth, lag, counts by status), sampled
from the servers into ``Metrics.sample`` for the metrics endpoint.

Only the maintenance leader samples the queue (counting jobs by status reads the whole
queue's rows: once per queue, not once per process); the other processes only check
that they reach both servers, for ``kyu_up``."""

from __future__ import annotations

from collections.abc import Callable

import trio

from .._errors import KyuConnectionError
from .._job import JobStatus
from ._metrics import SAMPLE_LIMIT, QueueSample
from ._service import Context, ticker


class Sampler:
    """A failed sample clears ``Metrics.sample``, so stale numbers are never shown.
    ``leading`` tells whether this process samples the queue (always, without one)."""

    def __init__(
        self, context: Context, interval: float, leading: Callable[[], bool] | None = None
    ) -> None:
        self._ctx = context
        self._interval = interval
        self._leading = leading

    async def run_once(self) -> None:
        ctx = self._ctx
        leading = self._leading is None or self._leading()
        try:
            with trio.fail_after(SAMPLE_LIMIT):
                if not leading:
                    ctx.metrics.sample = None
                    await ctx.store.ping()
                    await ctx.broker.ping()
                    ctx.metrics.up = True
                    return
                depth = await ctx.broker.size(ctx.queue)
                now = ctx.clock.now()
                stats = await ctx.store.queue_stats(ctx.queue, now)
        except (KyuConnectionError, trio.TooSlowError):
            ctx.metrics.sample = None
            ctx.metrics.up = False
            return
        ctx.metrics.sample = QueueSample(
            depth=depth,
            lag=stats.lag(now),
            by_status={status.value: stats.counts.get(status, 0) for status in JobStatus},
            paused=stats.paused,
        )
        ctx.metrics.up = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            # The first sample before started(): /metrics shows the queue from the start.
            await self.run_once()
            await ticker(
                self.run_once,
                self._interval,
                first_after_interval=True,
                task_status=task_status,
            )
        finally:
            # Nobody samples any more: what was sampled would only grow stale.
            self._ctx.metrics.sample = None
            self._ctx.metrics.up = False
