"""The sampler: what describes the whole queue (depth, lag, counts by status), sampled
from the servers into ``Metrics.sample`` for the metrics endpoint."""

from __future__ import annotations

import trio

from .._errors import KyuConnectionError
from .._job import JobStatus
from ._metrics import SAMPLE_LIMIT, QueueSample
from ._service import Context, ticker


class Sampler:
    """A failed sample clears ``Metrics.sample``, so stale numbers are never shown."""

    def __init__(self, context: Context, interval: float) -> None:
        self._ctx = context
        self._interval = interval

    async def run_once(self) -> None:
        ctx = self._ctx
        try:
            with trio.fail_after(SAMPLE_LIMIT):
                depth = await ctx.broker.size(ctx.queue)
                now = ctx.clock.now()
                stats = await ctx.store.queue_stats(ctx.queue, now)
        except (KyuConnectionError, trio.TooSlowError):
            ctx.metrics.sample = None
            return
        ctx.metrics.sample = QueueSample(
            depth=depth,
            lag=stats.lag(now),
            by_status={status.value: stats.counts.get(status, 0) for status in JobStatus},
        )

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
