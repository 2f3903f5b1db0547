"""The cron service: on the queue's maintenance leader, fires each registered entry's due
tick as one job. Which tick is due is decided by the pure rules of `kyu_trio._cron`;
that it is written once is decided by PostgreSQL, in the one fenced statement of
`Store.fire_cron`."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime

import trio

from .._cron import CronEntry, cron_job, decide, next_tick
from .._errors import KyuConnectionError
from .._ids import new_job_ids
from .._ports import Fence
from ._outage import Outage
from ._service import Context

#: The default job timeout when none is given (`Config.default_job_timeout`'s default).
DEFAULT_JOB_TIMEOUT = 30.0
#: Longest sleep of `CronService.run` between passes, so that entries registered while
#: the queue serves are recorded within it.
MAX_WAIT = 60.0


class CronService:
    """Fires the cron entries of one queue, on its maintenance leader.

    ``entries`` is read at each pass (pass the registry's list: entries added while the
    queue serves are picked up). Every pass first records the entries in the store if
    they changed or the lease did (a new leader records its own registrations), then
    fires, for each entry, its latest due tick: one job, enqueued due at the tick.

    Example::

        cron = CronService(ctx, registry.cron, default_job_timeout=config.default_job_timeout)
        enqueued = await cron.run_once(fence)
        await trio.sleep(cron.seconds_until_next(ctx.clock.now()))
    """

    def __init__(
        self,
        context: Context,
        entries: Sequence[CronEntry],
        *,
        default_job_timeout: float = DEFAULT_JOB_TIMEOUT,
        max_wait: float = MAX_WAIT,
    ) -> None:
        self._ctx = context
        self._entries = entries
        self._default_job_timeout = default_job_timeout
        self._max_wait = max_wait
        # What the store last recorded for us: under which lease, which entries.
        self._synced: tuple[Fence, tuple[CronEntry, ...]] | None = None
        # Entry name -> its last tick as we last read or wrote it; None: read it again.
        self._last: dict[str, datetime] | None = None
        # Entry name -> the first tick after its last one (None: it never ticks again):
        # a pass with nothing due asks croniter nothing.
        self._due: dict[str, datetime | None] = {}

    async def run_once(self, fence: Fence) -> int:
        """One pass under the lease ``fence``: record the entries if needed, then fire
        every due tick. Returns how many jobs were enqueued (0 if the lease is gone)."""
        ctx = self._ctx
        entries = tuple(self._entries)
        now = ctx.clock.now()
        if self._synced != (fence, entries):
            self._last = None
            if not await ctx.store.sync_cron(ctx.queue, entries, now, fence):
                self._synced = None
                ctx.log.debug("cron of %r: the lease is gone; nothing fired", ctx.queue)
                return 0
            self._synced = (fence, entries)
        if not entries:
            return 0
        if self._last is None:
            states = await ctx.store.cron_states(ctx.queue)
            self._last = {state.name: state.last_tick for state in states}
            self._due = {
                e.name: next_tick(e, self._last[e.name]) for e in entries if e.name in self._last
            }
        enqueued = 0
        for entry in entries:
            enqueued += await self._fire(entry, fence, now)
        return enqueued

    async def _fire(self, entry: CronEntry, fence: Fence, now: datetime) -> int:
        ctx, last = self._ctx, self._last
        if last is None:  # an earlier entry's fire found the rows moved: read them first
            return 0
        expected, due = last.get(entry.name), self._due.get(entry.name)
        if expected is None or due is None or due > now:
            return 0
        decision = decide(entry, expected, now)
        if decision is None:
            return 0
        job = None
        if decision.run:
            job = cron_job(
                entry, ctx.queue, decision.tick, new_job_ids(1)[0], self._default_job_timeout
            )
        try:
            ready = await ctx.store.fire_cron(
                ctx.queue, entry.name, expected, decision.tick, job, fence, now
            )
        except KyuConnectionError:
            # Written or not, unknown: read the row again next time (a tick written
            # already is then not due any more, and its job is pushed by the sweep).
            self._last = None
            raise
        if ready is None:
            # Another leader fired it, or our lease is gone: read the rows again.
            self._last = None
            ctx.log.debug(
                "cron entry %r of %r: tick %s was already fired, or the lease is gone",
                entry.name,
                ctx.queue,
                decision.tick.isoformat(),
            )
            return 0
        last[entry.name] = decision.tick
        self._due[entry.name] = next_tick(entry, decision.tick)
        skipped = due != decision.tick
        late = (now - decision.tick).total_seconds()
        if job is None:
            ctx.log.info(
                "cron entry %r of %r: skipped tick %s, found %.0fs late (missed='skip')",
                entry.name,
                ctx.queue,
                decision.tick.isoformat(),
                late,
                extra={"kyu_event": "cron_skipped", "cron": entry.name},
            )
            return 0
        await ctx.push_or_log(ready)
        ctx.metrics.jobs_total.inc()
        ctx.log.log(
            logging.INFO if skipped else logging.DEBUG,
            "cron entry %r of %r: job %s enqueued for tick %s%s",
            entry.name,
            ctx.queue,
            job.id,
            decision.tick.isoformat(),
            f" (earlier ticks since {expected.isoformat()} fell while no process served "
            "the queue and are not run)"
            if skipped
            else "",
            extra={
                "kyu_event": "cron_enqueued",
                "cron": entry.name,
                "job_id": job.id,
                "job_type": job.job_type,
            },
        )
        return 1

    def seconds_until_next(self, now: datetime) -> float:
        """Seconds from ``now`` to the next tick of any entry (0 if one is due; infinity
        without entries), for the leader to sleep until then."""
        due = self._due if self._last is not None else {}
        ticks = [
            t
            for t in (due[e.name] if e.name in due else next_tick(e, now) for e in self._entries)
            if t is not None
        ]
        if not ticks:
            return math.inf
        return max((min(ticks) - now).total_seconds(), 0.0)

    async def run(self, fence: Fence) -> None:
        """`run_once` at every tick, until cancelled (when the lease is lost); a pass
        that loses PostgreSQL is tried again after the outage's backoff."""
        ctx = self._ctx
        outage = Outage(ctx.log, f"cron of {ctx.queue!r}")
        while True:
            try:
                await self.run_once(fence)
            except KyuConnectionError as exc:
                await outage.wait(exc)
                continue
            outage.recovered()
            wait = self.seconds_until_next(ctx.clock.now())
            # At least a moment: a wall clock a little behind trio's wakes us just
            # before the tick, and the next pass finds it due.
            await trio.sleep(min(max(wait, 0.001), self._max_wait))
