"""An in-memory `Broker`: sorted sets of ids in dicts, with waiters woken on push."""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from .._ports import Ready
from .._score import score
from .._waiters import WAITING_TTL
from ._redis import parked_key


class MemoryBroker:
    """Behaves as `RedisBroker` does, including losing everything on `flush()`."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[str, float]] = {}
        self._markers: set[str] = set()
        self._pushed = trio.Event()
        self._waiting: dict[str, float] = {}  # queue -> when its waiting mark expires
        self._finished: dict[str, trio.Event] = {}
        self._last_finished: dict[str, set[str]] = {}

    def flush(self) -> None:
        """Forget everything, as FLUSHALL or a restart without persistence would."""
        self.sets.clear()
        self._markers.clear()

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    async def push(self, queue: str, entries: Sequence[Ready]) -> None:
        await trio.lowlevel.checkpoint()
        self._push_now(queue, entries)

    def push_blocking(self, queue: str, entries: Sequence[Ready]) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a worker thread (a real store's after_commit)
            trio.from_thread.run_sync(self._push_now, queue, entries)
        else:
            self._push_now(queue, entries)

    def _push_now(self, queue: str, entries: Sequence[Ready]) -> None:
        members = self.sets.setdefault(queue, {})
        for entry in entries:
            members[entry.id] = score(entry.priority, entry.seq)
        if entries:
            self._pushed.set()
            self._pushed = trio.Event()

    def _pop_now(self, queue: str, count: int) -> dict[str, float]:
        members = self.sets.get(queue, {})
        ids = sorted(members, key=lambda m: (members[m], m))[:count]
        return {job_id: members.pop(job_id) for job_id in ids}

    async def pop(self, queue: str, count: int) -> dict[str, float]:
        await trio.lowlevel.checkpoint()
        return self._pop_now(queue, count)

    async def pop_wait(self, queue: str, wait: float, count: int = 1) -> dict[str, float]:
        await trio.lowlevel.checkpoint()
        with trio.move_on_after(wait):
            while not self.sets.get(queue):
                await self._pushed.wait()
        return self._pop_now(queue, count)

    async def restore(self, queue: str, popped: dict[str, float]) -> None:
        await trio.lowlevel.checkpoint()
        self.sets.setdefault(queue, {}).update(popped)
        if popped:
            self._pushed.set()
            self._pushed = trio.Event()

    async def remove(self, queue: str, ids: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        members = self.sets.get(queue, {})
        for job_id in ids:
            members.pop(job_id, None)

    async def size(self, queue: str) -> int:
        await trio.lowlevel.checkpoint()
        return len(self.sets.get(queue, {}))

    async def missing(self, queue: str, ids: Sequence[str]) -> list[str]:
        await trio.lowlevel.checkpoint()
        members = self.sets.get(queue, {})
        return [i for i in ids if i not in members]

    async def claim_epoch(self, queue: str) -> bool:
        await trio.lowlevel.checkpoint()
        if queue in self._markers:
            return False
        self._markers.add(queue)
        return True

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def has_waiters(self, queue: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._waiting.get(queue, -math.inf) > trio.current_time()

    async def publish_finished(self, queue: str, ids: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        if ids:
            self._last_finished[queue] = set(ids)
            self._finished.pop(queue, trio.Event()).set()

    async def wait_finished(self, queue: str, ids: Sequence[str], wait: float) -> bool:
        await trio.lowlevel.checkpoint()
        self._waiting[queue] = trio.current_time() + WAITING_TTL
        wanted = set(ids)
        with trio.move_on_after(wait):
            while True:
                event = self._finished.setdefault(queue, trio.Event())
                await event.wait()
                if wanted & self._last_finished.get(queue, set()):
                    return True
        return False

    async def park(self, queue: str, job_type: str, popped: dict[str, float]) -> None:
        await trio.lowlevel.checkpoint()
        self.sets.setdefault(parked_key(queue, job_type), {}).update(popped)

    async def unpark(self, queue: str, job_type: str, count: int) -> int:
        await trio.lowlevel.checkpoint()
        moved = self._pop_now(parked_key(queue, job_type), max(count, 0))
        if moved:
            self.sets.setdefault(queue, {}).update(moved)
            self._pushed.set()
            self._pushed = trio.Event()
        return len(moved)
