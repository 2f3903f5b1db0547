"""A serving process's row in ``kyu_processes`` (`Queue.processes` reads them): written
when `serve()` starts and every ``leader_interval`` after, by the task that campaigns for
the maintenance lease (`Leadership`), and deleted when it stops.

A refresh that fails (PostgreSQL away) is logged once per outage and tried again at the
next one; the row expires three intervals after its last refresh, so a short outage never
makes a live process disappear, and a process that died disappears within three.
"""

from __future__ import annotations

import math
import os
import socket

import attrs
import trio

from .._errors import KyuConnectionError
from .._processes import EXPIRY_INTERVALS, ProcessInfo
from ._outage import Outage
from ._service import Context


class Presence:
    """This process's row among the queue's processes.

    Example::

        presence = Presence(ctx, worker_id, workers=config.workers, interval=5.0)
        await presence.refresh()       # at start, then whenever the campaign loop wakes
        await presence.withdraw()      # at stop, shielded
    """

    def __init__(self, context: Context, process_id: str, *, workers: int, interval: float) -> None:
        self._ctx = context
        self._process_id = process_id
        self._workers = workers
        self._interval = interval
        self._row: ProcessInfo | None = None
        # When the row was last written, by trio's clock (-inf: never).
        self._written_at = -math.inf
        self._outage = Outage(context.log, f"process registry of {context.queue!r}")

    async def refresh(self) -> None:
        """Write the row if about one ``interval`` has passed since the last write (or
        none was made yet); a lost PostgreSQL is logged, and the next call tries again."""
        # A leader wakes every third of an interval: three such sleeps may add up to a
        # hair under one interval, and must still write.
        if trio.current_time() - self._written_at < self._interval * 0.9:
            return
        ctx = self._ctx
        now = ctx.clock.now()
        if self._row is None:
            self._row = ProcessInfo(
                process_id=self._process_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                workers=self._workers,
                started_at=now,
                last_seen=now,
            )
        row = self._row = attrs.evolve(self._row, last_seen=now)
        sent = trio.current_time()
        try:
            await ctx.store.record_process(ctx.queue, row, EXPIRY_INTERVALS * self._interval)
        except KyuConnectionError as exc:
            self._outage.failed(exc)
            return
        self._outage.recovered()
        self._written_at = sent

    async def withdraw(self) -> None:
        """Delete the row (a clean stop). If PostgreSQL is away it is logged, and the row
        expires by itself. The caller shields and bounds the call."""
        if self._row is None:
            return
        ctx = self._ctx
        try:
            await ctx.store.remove_process(ctx.queue, self._process_id)
        except KyuConnectionError as exc:
            ctx.log.info("could not delete this process's row (%s); it expires by itself", exc)
