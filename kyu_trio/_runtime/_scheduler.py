"""The scheduler: promotes due scheduled/failed jobs into the broker, and resyncs the
broker from the store when it has lost its data."""

from __future__ import annotations

import logging

import trio

from ._outage import Outage
from ._service import Context, ticker

BATCH = 1000


class Scheduler:
    def __init__(self, context: Context, interval: float) -> None:
        self._ctx = context
        self._interval = interval

    async def run_once(self) -> int:
        """One pass: resync the broker if it lost its data, then push every due job.
        Returns how many jobs were promoted."""
        ctx = self._ctx
        if await ctx.broker.claim_epoch(ctx.queue):
            await self.resync()
        now = ctx.clock.now()
        promoted = 0
        while True:
            ready = await ctx.store.promote_due(ctx.queue, now, BATCH)
            await ctx.broker.push(ctx.queue, ready)
            promoted += len(ready)
            if len(ready) < BATCH:
                break
        if promoted:
            ctx.log.debug("promoted %d due jobs of %r", promoted, ctx.queue)
            ctx.metrics.promoted.inc(promoted)
        return promoted

    async def resync(self) -> int:
        """Push every pending job of the queue to the broker again, page by page."""
        ctx = self._ctx
        after, pushed = 0, 0
        while page := await ctx.store.pending_after(ctx.queue, after, BATCH):
            await ctx.broker.push(ctx.queue, page)
            pushed += len(page)
            after = page[-1].seq
        ctx.metrics.resyncs.inc()
        ctx.log.log(
            logging.INFO if pushed else logging.DEBUG,
            "the broker had no record of queue %r (new, flushed or restarted): "
            "resynced %d pending jobs from the store",
            ctx.queue,
            pushed,
        )
        return pushed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        outage = Outage(self._ctx.log, f"scheduler of {self._ctx.queue!r}")
        await ticker(self.run_once, self._interval, outage, task_status=task_status)
