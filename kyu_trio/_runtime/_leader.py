"""The maintenance leader: of all the processes serving a queue, one at a time runs its
maintenance (promotion of due jobs, rescue of lost workers' jobs, the Redis sweep, cron
and pruning), so their queries do not grow with the number of processes.

The role is a lease row in PostgreSQL (``kyu_leaders``), taken and renewed by one
conditional upsert (`Store.lead`): the database decides who leads, never Python timing.
Each process asks every ``leader_interval``; the leader renews three times as often. A
lease lasts one ``leader_interval`` unrenewed, so when the leader dies or loses
PostgreSQL another process takes over within two intervals. The leader itself stops
its services once its lease may have run out (a cancel scope deadline at the lease's
end, by trio's monotonic clock, counted from when the renewal was sent), so two leaders
overlap only if clocks disagree; the writes that must never be doubled (a cron tick) are
fenced by the lease's term in their own statement, and every other maintenance write is
conditional on the row's state, so an overlap costs a repeated query, never a wrong one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from .._errors import KyuConnectionError
from .._ports import Fence
from ._outage import Outage
from ._presence import Presence
from ._service import Context

#: How often the leader renews its lease, as a share of the lease's length.
RENEWALS_PER_LEASE = 3
#: How long a stopping leader waits to hand the lease back (else it expires by itself).
RESIGN_LIMIT = 1.0

#: A leader's service: runs until cancelled (when the lease is lost), fenced by the lease.
LeaderService = Callable[[Fence], Awaitable[object]]


class Leadership:
    """Campaigns for the queue's maintenance lease and, while this process holds it,
    runs ``services`` (each called with the lease's `Fence`, in a nursery cancelled when
    the lease is lost, given up or may have expired). With a ``presence``, it also keeps
    this process's row among the queue's processes: written before the first campaign
    returns and refreshed as it campaigns, deleted when it stops.

    Example::

        leadership = Leadership(ctx, worker_id, 5.0, [scheduler_service, reaper_service])
        await nursery.start(leadership.run)
    """

    def __init__(
        self,
        context: Context,
        holder: str,
        interval: float,
        services: Sequence[LeaderService],
        *,
        presence: Presence | None = None,
    ) -> None:
        self._ctx = context
        self._presence = presence
        self._holder = holder
        self._interval = interval
        self._services = list(services)
        self._fence: Fence | None = None
        self._scope: trio.CancelScope | None = None
        #: How many times this process became the leader (for tests and logs).
        self.elections = 0

    @property
    def fence(self) -> Fence | None:
        """The lease while this process holds it and it has not run out, else None."""
        scope = self._scope
        if scope is None or scope.cancel_called or trio.current_time() >= scope.deadline:
            return None
        return self._fence

    @property
    def leading(self) -> bool:
        return self.fence is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ctx = self._ctx
        outage = Outage(ctx.log, f"leader election of {ctx.queue!r}")
        ctx.metrics.leader.set_function(lambda: 1.0 if self.leading else 0.0)
        try:
            async with trio.open_nursery() as nursery:
                # The first campaign before started(): a lone process leads from the start.
                await self._campaign(nursery, outage)
                await self._refresh_presence()
                task_status.started()
                while True:
                    renew = self._interval / RENEWALS_PER_LEASE
                    await trio.sleep(renew if self.leading else self._interval)
                    await self._campaign(nursery, outage)
                    await self._refresh_presence()
        finally:
            await self._resign()

    async def _campaign(self, nursery: trio.Nursery, outage: Outage) -> None:
        ctx = self._ctx
        sent = trio.current_time()
        try:
            fence = await ctx.store.lead(ctx.queue, self._holder, ctx.clock.now(), self._interval)
        except KyuConnectionError as exc:
            # Keep leading until the lease may have run out (the scope's deadline): a
            # blip shorter than that changes nothing.
            outage.failed(exc)
            self._note_expiry()
            return
        outage.recovered()
        if fence is None:
            self._lose("another process holds the lease")
            return
        if self._scope is not None and self.fence == fence:
            self._scope.deadline = sent + self._interval
            return
        # Held before but lapsed (a renewal came too late), or never held: start afresh.
        self._lose("its lease ran out before it could renew it")
        self._elect(nursery, fence, deadline=sent + self._interval)

    def _elect(self, nursery: trio.Nursery, fence: Fence, *, deadline: float) -> None:
        ctx = self._ctx
        self._fence = fence
        self._scope = scope = trio.CancelScope(deadline=deadline)
        self.elections += 1
        ctx.log.info(
            "%s now leads the maintenance of queue %r (term %d)",
            self._holder,
            ctx.queue,
            fence.term,
            extra={"kyu_event": "leader", "term": fence.term},
        )
        nursery.start_soon(self._lead, scope, fence)

    async def _lead(self, scope: trio.CancelScope, fence: Fence) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for service in self._services:
                    nursery.start_soon(service, fence)

    def _note_expiry(self) -> None:
        if self._scope is not None and trio.current_time() >= self._scope.deadline:
            self._lose("its lease ran out before it could renew it")

    def _lose(self, why: str) -> None:
        scope, fence = self._scope, self._fence
        if scope is None or fence is None:
            return
        scope.cancel()
        self._scope = None
        self._ctx.log.warning(
            "%s no longer leads the maintenance of queue %r: %s",
            self._holder,
            self._ctx.queue,
            why,
            extra={"kyu_event": "leader_lost", "term": fence.term},
        )

    async def _refresh_presence(self) -> None:
        if self._presence is not None:
            await self._presence.refresh()

    async def _resign(self) -> None:
        """Hand the lease back at once, so the next leader need not wait for it to expire,
        and delete this process's row."""
        fence, self._fence = self.fence, None
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        if fence is None and self._presence is None:
            return
        with trio.move_on_after(RESIGN_LIMIT) as scope:
            scope.shield = True
            if fence is not None:
                try:
                    await self._ctx.store.resign(self._ctx.queue, fence)
                except KyuConnectionError as exc:
                    self._ctx.log.info(
                        "could not hand the lease back (%s); it expires by itself", exc
                    )
            if self._presence is not None:
                await self._presence.withdraw()
