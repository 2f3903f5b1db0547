"""The enqueue listener: pushes to the broker the jobs that callers enqueued inside their
own transactions (``conn=``), when those transactions commit.

Such an enqueue cannot push by itself: its row is not committed when it returns, and
may never be. The row's trigger (migration 004) sends a ``kyu_enqueued`` notification,
which PostgreSQL delivers only at COMMIT; every serving worker listens, and pushes the
jobs of its own queue. Several workers pushing the same job is harmless (the same
member with the same score), and so is a push of a job already claimed (a claim is
conditional on the row). A notification missed while the listener was reconnecting is
repaired by the reaper's sweep, which pushes pending rows the broker lacks.

The same connection hears of running jobs that `cancel_job` cancelled (``kyu_cancelled``)
and hands their ids to the pool, which cancels those it runs; one missed is found by the
pool's heartbeat.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import trio

from .._errors import KyuConnectionError
from .._ports import Ready
from ._outage import Outage
from ._service import Context

#: The most jobs pushed by one ZADD; a larger burst takes several.
MAX_PUSH = 5_000


def parse_enqueued(payload: str) -> tuple[str, Ready] | None:
    """``"<id> <priority> <seq> <queue>"`` as (queue, Ready); None if malformed."""
    parts = payload.split(" ", 3)
    if len(parts) != 4:
        return None
    job_id, priority, seq, queue = parts
    try:
        return queue, Ready(job_id, int(priority), int(seq))
    except ValueError:
        return None


@runtime_checkable
class NotifyingStore(Protocol):
    """A store that tells of what other processes committed: `PostgresStore` (LISTEN)
    and `MemoryStore` (callbacks)."""

    async def listen_enqueued(
        self,
        listening: Callable[[], None],
        deliver: Callable[[list[str]], None],
        cancelled: Callable[[list[str]], None] | None = None,
    ) -> None: ...


def parse_cancelled(payload: str) -> tuple[str, str] | None:
    """``"<id> <queue>"`` (a ``kyu_cancelled`` notification) as (queue, id)."""
    job_id, space, queue = payload.partition(" ")
    return (queue, job_id) if space and job_id else None


class EnqueueListener:
    """``catch_up`` runs each time the listener starts listening (at start and after a
    reconnection): it pushes what committed while nobody listened (the reaper's pass),
    so those jobs do not wait for the reaper's next interval.

    ``cancelled``, when given, is called with the id of each running job of this queue
    that `cancel_job` cancelled, as soon as the cancel commits (the pool then cancels the
    run if it holds it). One missed while the listener reconnects is found by the
    holder's heartbeat."""

    def __init__(
        self,
        context: Context,
        store: NotifyingStore,
        catch_up: Callable[[], Awaitable[object]],
        cancelled: Callable[[str], None] | None = None,
    ) -> None:
        self._ctx = context
        self._store = store
        self._catch_up = catch_up
        self._cancelled = cancelled

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ctx = self._ctx
        outage = Outage(ctx.log, f"enqueue listener of {ctx.queue!r}")
        # Unbounded: the thread must never block on it, and what it holds is bounded by
        # what callers committed. None means "listening (again)".
        send, receive = trio.open_memory_channel[list[str] | None](math.inf)

        def listening() -> None:
            outage.recovered()
            send.send_nowait(None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._push_batches, receive)
            task_status.started()
            while True:
                try:
                    stopped = None if self._cancelled is None else self._on_cancelled
                    await self._store.listen_enqueued(listening, send.send_nowait, stopped)
                except KyuConnectionError as exc:
                    await outage.wait(exc)

    async def _push_batches(self, receive: trio.MemoryReceiveChannel[list[str] | None]) -> None:
        async for item in receive:
            if item is None:
                await self._catch_up_logged()
                continue
            batch = item
            # What has already arrived goes out in the same push.
            while len(batch) < MAX_PUSH:
                try:
                    more = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                if more is None:  # a reconnection: rare, and caught up just below
                    await self._catch_up_logged()
                    continue
                batch.extend(more)
            ready = self._ours(batch)
            if ready:
                await self._ctx.push_or_log(ready)

    async def _catch_up_logged(self) -> None:
        try:
            await self._catch_up()
        except KyuConnectionError as exc:
            self._ctx.log.warning("could not catch up after listening (%s); the sweep will", exc)

    def _ours(self, batch: list[str]) -> list[Ready]:
        ready = []
        for payload in batch:
            parsed = parse_enqueued(payload)
            if parsed is not None and parsed[0] == self._ctx.queue:
                ready.append(parsed[1])
        return ready

    def _on_cancelled(self, batch: list[str]) -> None:
        """Called in trio by the store as cancels commit; must not raise or block."""
        assert self._cancelled is not None
        for payload in batch:
            parsed = parse_cancelled(payload)
            if parsed is not None and parsed[0] == self._ctx.queue:
                self._cancelled(parsed[1])
