"""The scheduler: promotes due scheduled/failed jobs into the broker, and resyncs the
broker from the store when it has lost its data."""

from __future__ import annotations

import logging
from datetime import datetime

import trio

from .._errors import KyuError
from .._ports import Ready
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
        ready = await ctx.store.promote_due(ctx.queue, now, BATCH)
        while len(ready) == BATCH:
            ready, pushed = await self._push_and_promote(ready, now)
            promoted += pushed
        await ctx.broker.push(ctx.queue, ready)
        promoted += len(ready)
        if promoted:
            ctx.log.debug("promoted %d due jobs of %r", promoted, ctx.queue)
            ctx.metrics.promoted.inc(promoted)
        return promoted

    async def _push_and_promote(self, ready: list[Ready], now: datetime) -> tuple[list[Ready], int]:
        """Push ``ready`` while the next batch is promoted: the two share nothing, and the
        statements still run one after another, so jobs are promoted in due order. The
        first `KyuError` is raised (the promotion's first); rows promoted but not pushed
        are pending in the store, and the sweep pushes them."""
        ctx = self._ctx
        errors: list[KyuError] = []
        found: list[Ready] = []

        async def push() -> None:
            try:
                await ctx.broker.push(ctx.queue, ready)
            except KyuError as exc:
                errors.append(exc)

        async def promote() -> None:
            try:
                found.extend(await ctx.store.promote_due(ctx.queue, now, BATCH))
            except KyuError as exc:
                errors.insert(0, exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(push)
            nursery.start_soon(promote)
        if errors:
            raise errors[0]
        return found, len(ready)

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
