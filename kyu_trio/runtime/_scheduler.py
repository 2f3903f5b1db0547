"""The scheduler: promotes due scheduled/failed jobs into the broker, and resyncs the
broker from the store when it has lost its data."""

from __future__ import annotations

import logging

import trio

from .._clock import Clock
from .._errors import KyuConnectionError
from .._ports import Broker, Store
from ._metrics import Metrics
from ._outage import Outage

BATCH = 1000


class Scheduler:
    def __init__(
        self, *, queue: str, store: Store, broker: Broker, clock: Clock,
        interval: float, logger: logging.Logger, metrics: Metrics | None = None,
    ) -> None:
        self._queue = queue
        self._store = store
        self._broker = broker
        self._clock = clock
        self._interval = interval
        self._log = logger
        self._metrics = metrics
        self.promoted = 0
        self.resyncs = 0

    async def run_once(self) -> int:
        """One pass: resync the broker if it lost its data, then push every due job.
        Returns how many jobs were promoted."""
        if await self._broker.claim_epoch(self._queue):
            await self.resync()
        now = self._clock.now()
        promoted = 0
        while True:
            ready = await self._store.promote_due(self._queue, now, BATCH)
            await self._broker.push(self._queue, ready)
            promoted += len(ready)
            if len(ready) < BATCH:
                break
        if promoted:
            self._log.debug("promoted %d due jobs of %r", promoted, self._queue)
        self.promoted += promoted
        if self._metrics is not None and promoted:
            self._metrics.promoted.inc(promoted)
        return promoted

    async def resync(self) -> int:
        """Push every pending job of the queue to the broker again, page by page."""
        after, pushed = 0, 0
        while page := await self._store.pending_after(self._queue, after, BATCH):
            await self._broker.push(self._queue, page)
            pushed += len(page)
            after = page[-1].seq
        self.resyncs += 1
        if self._metrics is not None:
            self._metrics.resyncs.inc()
        self._log.log(
            logging.INFO if pushed else logging.DEBUG,
            "the broker had no record of queue %r (new, flushed or restarted): "
            "resynced %d pending jobs from the store", self._queue, pushed,
        )
        return pushed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        outage = Outage(self._log, f"scheduler of {self._queue!r}")
        task_status.started()
        while True:
            try:
                await self.run_once()
                outage.recovered()
            except KyuConnectionError as exc:
                await outage.wait(exc)
                continue
            await trio.sleep(self._interval)
