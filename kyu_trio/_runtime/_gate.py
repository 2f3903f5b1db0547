"""The claim gate of a worker pool: what happens to popped ids that the claim held back
because the queue is paused or their job type is limited.

The decisions are the store's: `Store.claim_jobs` takes no job of a paused queue and no
job of a limited type, and `Store.claim_limited` takes as many of a limited type as its
limits allow, under a lock of the type's limits row. This module only routes the ids:

- paused: the ids go back to the broker as they were, and the fetchers stop popping
  until the store says the queue is resumed (asked every `PAUSE_POLL` seconds);
- limited, over the limit: the ids are *parked* in a set of their type in the broker,
  out of the queue's set, so other types flow past them (no head-of-line blocking).
  They come back when a slot frees: when this process records outcomes of the type
  (one id back per finished job), and, for a rate limit, at the time the store said
  the window lets the next start through. The reaper's sweep is the safety net: it
  pushes pending rows the queue's set lacks, parked ones included.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import trio

from .._errors import KyuConnectionError
from .._job import Job
from ._handlers import Registry
from ._outage import Outage
from ._service import Context

#: How often fetchers of a paused queue ask whether it was resumed (seconds).
PAUSE_POLL = 1.0
#: How often a process gives parked ids of each type it parked another chance (seconds).
PARK_RECHECK = 1.0
#: Most ids one unpark moves back.
MAX_UNPARK = 100


class ClaimGate:
    """Example::

    gate = ClaimGate(ctx, registry, worker_id)
    claimed += await gate.held_back(popped, claimed)
    """

    def __init__(self, context: Context, registry: Registry, worker_id: str) -> None:
        self._ctx = context
        self._registry = registry
        self._worker_id = worker_id
        #: Whether the last claim found the queue paused (the store decides; this only
        #: stops the fetchers from popping in vain).
        self.paused = False
        # Types known to be limited: registered here, or learnt from a held claim.
        self._limited: set[str] = set(registry.limits)
        # Job type -> trio time at which its rate limit lets the next start through.
        self._unpark_at: dict[str, float] = {}
        self._wake = trio.Event()
        # Types this process parked ids of, and when to give them another chance.
        self._parked: set[str] = set()
        self._recheck_at = -math.inf

    async def record_limits(self) -> None:
        """Record the registered limits (and that the other registered types have none)."""
        ctx, limits = self._ctx, self._registry.limits
        unlimited = [t for t in self._registry.handlers if t not in limits]
        if limits or unlimited:
            await ctx.store.set_limits(ctx.queue, limits, unlimited, ctx.clock.now())

    async def held_back(self, popped: dict[str, float], claimed: list[Job]) -> list[Job]:
        """Route the popped ids that ``claimed`` lacks; return the jobs of limited types
        claimed through their limits. Raises `KyuConnectionError` like a claim (then the
        caller resolves which rows it took)."""
        taken = {job.id for job in claimed}
        rest = [i for i in popped if i not in taken]
        if not rest:
            self.paused = False
            return []
        ctx = self._ctx
        held = await ctx.store.held_among(ctx.queue, rest, ctx.clock.now())
        if held.paused:
            if not self.paused:
                ctx.log.info("queue %r is paused: not claiming until it is resumed", ctx.queue)
            self.paused = True
            await ctx.broker.restore(ctx.queue, {i: popped[i] for i in rest})
            return []
        self.paused = False
        more: list[Job] = []
        for job_type, ids in held.limited.items():
            self._limited.add(job_type)
            got = await ctx.store.claim_limited(
                ctx.queue, job_type, ids, self._worker_id, ctx.clock.now()
            )
            more.extend(got.claimed)
            got_ids = {job.id for job in got.claimed}
            over = {i: popped[i] for i in ids if i not in got_ids}
            if over:
                await ctx.broker.park(ctx.queue, job_type, over)
                self._parked.add(job_type)
            if got.next_start is not None:
                wait = (got.next_start - ctx.clock.now()).total_seconds()
                self._unpark_later(job_type, trio.current_time() + max(wait, 0.0))
        return more

    def _unpark_later(self, job_type: str, when: float) -> None:
        if when < self._unpark_at.get(job_type, math.inf):
            self._unpark_at[job_type] = when
            self._wake.set()

    async def released(self, job_types: Iterable[str]) -> None:
        """Jobs of these types stopped running here: a slot of each limited one freed,
        so one parked id of it goes back to the queue per job. Costs nothing (not even
        a look at ``job_types``) while no type of the queue is known to be limited."""
        if not self._limited:
            return
        counts = Counter(t for t in job_types if t in self._limited)
        ctx = self._ctx
        for job_type, n in counts.items():
            try:
                await ctx.broker.unpark(ctx.queue, job_type, n)
            except KyuConnectionError as exc:
                # The sweep pushes parked ids back (they are pending rows missing from
                # the queue's set): later, not never.
                ctx.log.warning("could not unpark %d %r jobs (%s)", n, job_type, exc)

    async def wait_resumed(self) -> None:
        """Return once the store says the queue is no longer paused."""
        ctx = self._ctx
        outage = Outage(ctx.log, f"pause check of {ctx.queue!r}")
        while self.paused:
            await trio.sleep(PAUSE_POLL)
            try:
                self.paused = await ctx.store.is_paused(ctx.queue)
            except KyuConnectionError as exc:
                await outage.wait(exc)
                continue
            outage.recovered()
        ctx.log.info("queue %r is resumed", ctx.queue)

    async def unparker(self) -> None:
        """Bring parked ids back when their type may run again (runs until cancelled):
        rate-limited types when the window lets a start through; and, every
        `PARK_RECHECK` seconds, some ids of each type this process parked, in case the
        wake-up was lost (the slot freed in another process while these ids were still
        on their way to the parked set, so that process found nothing to unpark)."""
        while True:
            due_at = min(self._unpark_at.values(), default=math.inf)
            with trio.move_on_at(min(due_at, trio.current_time() + PARK_RECHECK)):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            for job_type in [t for t, at in self._unpark_at.items() if at <= now]:
                del self._unpark_at[job_type]
                await self._unpark(job_type)
            if now >= self._recheck_at:
                self._recheck_at = now + PARK_RECHECK
                for job_type in list(self._parked):
                    if not await self._unpark(job_type):
                        self._parked.discard(job_type)

    async def _unpark(self, job_type: str) -> int:
        """Move as many parked ids back as the type's limit could start at once."""
        limit = self._registry.limits.get(job_type)
        count = min((limit and (limit.concurrency or limit.rate_count)) or 1, MAX_UNPARK)
        try:
            return await self._ctx.broker.unpark(self._ctx.queue, job_type, count)
        except KyuConnectionError as exc:
            self._ctx.log.warning("could not unpark %r jobs (%s); the sweep will", job_type, exc)
            return 0
