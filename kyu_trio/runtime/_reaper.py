"""The reaper: rescues jobs whose worker was lost, and repairs ids missing from the broker."""

from __future__ import annotations

import logging
from datetime import timedelta

import trio

from .._clock import Clock
from .._errors import KyuConnectionError
from .._ports import Broker, Store
from ._metrics import Metrics
from ._outage import Outage

BATCH = 1000
#: Pending rows checked against the broker per pass; the sweep resumes where it stopped.
SWEEP_PER_PASS = 20_000


class Reaper:
    def __init__(
        self, *, queue: str, store: Store, broker: Broker, clock: Clock,
        interval: float, stale_after: float, logger: logging.Logger,
        metrics: Metrics | None = None,
    ) -> None:
        self._queue = queue
        self._store = store
        self._broker = broker
        self._clock = clock
        self._interval = interval
        self._stale_after = timedelta(seconds=stale_after)
        self._log = logger
        self._metrics = metrics
        self._sweep_cursor = 0
        self.rescued = 0
        self.dead = 0
        self.repaired = 0

    async def run_once(self) -> int:
        """One pass: rescue stale running jobs, then check a slice of pending jobs against
        the broker. Returns how many jobs were rescued (requeued or dead)."""
        now = self._clock.now()
        rescued, dead_before = 0, self.dead
        while True:
            rescue = await self._store.rescue_stale(
                self._queue, now, now - self._stale_after, BATCH
            )
            await self._broker.push(self._queue, rescue.requeued)
            for job_id in [r.id for r in rescue.requeued]:
                self._log.warning("rescued job %s from a lost worker", job_id,
                                  extra={"job_id": job_id, "kyu_event": "rescued"})
            for job_id in rescue.dead:
                self._log.error("job %s is dead: its worker was lost on its last try", job_id,
                                extra={"job_id": job_id, "kyu_event": "dead"})
            batch = len(rescue.requeued) + len(rescue.dead)
            rescued += batch
            self.dead += len(rescue.dead)
            if batch < BATCH:
                break
        self.rescued += rescued
        if self._metrics is not None and rescued:
            self._metrics.rescued.inc(rescued)
            self._metrics.lost(self.dead - dead_before)
        await self._sweep()
        return rescued

    async def _sweep(self) -> None:
        """Push pending jobs that the broker does not hold (a push that failed after the
        row was committed). Bounded per pass; a full sweep may span several passes."""
        checked = 0
        while checked < SWEEP_PER_PASS:
            page = await self._store.pending_after(self._queue, self._sweep_cursor, BATCH)
            if not page:
                self._sweep_cursor = 0
                return
            missing = await self._broker.missing(self._queue, [r.id for r in page])
            if missing:
                # A fetcher may have popped some of these a moment ago and be claiming
                # them now: push only those still pending after that round trip.
                lost = await self._store.pending_among(self._queue, missing)
                if lost:
                    await self._broker.push(self._queue, lost)
                    self.repaired += len(lost)
                    self._log.warning("pushed %d pending jobs missing from the broker",
                                      len(lost))
            self._sweep_cursor = page[-1].seq
            checked += len(page)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        outage = Outage(self._log, f"reaper of {self._queue!r}")
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            while True:
                try:
                    await self.run_once()
                    outage.recovered()
                    break
                except KyuConnectionError as exc:
                    await outage.wait(exc)
