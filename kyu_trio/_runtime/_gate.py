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
        so one parked id of it goes back to the queue per job."""
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
        """Bring parked ids of rate-limited types back when their window lets a start
        through (runs until cancelled)."""
        ctx = self._ctx
        while True:
            if not self._unpark_at:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            job_type, when = min(self._unpark_at.items(), key=lambda item: item[1])
            with trio.move_on_at(when):
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            del self._unpark_at[job_type]
            limit = self._registry.limits.get(job_type)
            count = limit.rate_count if limit and limit.rate_count else 1
            try:
                await ctx.broker.unpark(ctx.queue, job_type, count)
            except KyuConnectionError as exc:
                ctx.log.warning("could not unpark %r jobs (%s); the sweep will", job_type, exc)
