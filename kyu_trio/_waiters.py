"""Waiting for results: the names waiters and workers meet at, and `WaitHub`, the pure
bookkeeping of one process's `result()` calls.

How a result reaches its waiter:

- a client's waiters keep their queue's `waiting_key` alive (a short TTL, refreshed while
  any of them waits) and listen on its `finished_channel`;
- a worker, once it has committed a batch of outcomes, publishes the ids of the jobs that
  reached a final state there, only while the key exists (it asks at most once a second:
  without waiters the hot path pays nothing but that);
- the client then looks up, in ONE query, every job it waits for that was named, and
  wakes the waiters of those that are final. A notification missed (Redis restarted, the
  key was absent when the worker last asked) is caught by a slow poll: every
  `POLL_INTERVAL` seconds one query for all of the process's pending waiters.

So a thousand waiters in one process cost a query per notification or poll, not one each.
Each client runs the I/O of this loop (in a thread for `Client`, a task for
`AsyncioClient`); `WaitHub` is what they share, and holds no lock and does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ._errors import JobFailed, JobNotFound, KyuError
from ._job import FINAL_STATES, Job, JobStatus

#: How long a process's waiters keep a queue's `waiting_key` alive without refreshing it
#: (they refresh it every `WAITING_REFRESH` seconds while any of them waits).
WAITING_TTL = 10
WAITING_REFRESH = 3.0
#: How often a worker asks Redis whether anyone waits for its queue's results.
WAITING_CHECK_INTERVAL = 1.0
#: The fallback poll: every job still waited for is looked up (in one query) this often.
POLL_INTERVAL = 2.0
#: How long a client's waiting loop blocks on its pub/sub connection before it looks
#: at new waiters again: their first lookup comes at most this late.
TICK = 0.02


def waiting_key(queue: str) -> str:
    """The key `result()` waiters keep alive: workers publish finished ids only while it
    exists. ('~' is not allowed in queue names: no queue's set can collide with it.)"""
    return f"{queue}:~waiting"


def finished_channel(queue: str) -> str:
    """The pub/sub channel of the ids of the queue's jobs that reached a final state."""
    return f"{queue}:~finished"


def parse_finished(data: Any) -> list[str]:
    """The job ids of a message on a `finished_channel` (comma-separated)."""
    text = data.decode() if isinstance(data, bytes) else str(data)
    return [i for i in text.split(",") if i]


def result_of(job: Job) -> Any:
    """What `result()` gives for a final job: a completed job's result; `JobFailed` for a
    dead or cancelled one."""
    if job.status is JobStatus.COMPLETED:
        return job.result
    raise JobFailed(job)


@attrs.define(eq=False)
class Waiter:
    """One `result()` call: what it waits for, and how its caller is woken."""

    job_id: str
    wake: Callable[[], None]
    job: Job | None = None  # the job, once final
    error: KyuError | None = None  # JobNotFound, or the error that ended the wait


class WaitHub:
    """The waiters of one client, by job id, and which of them to look up next.

    Example::

        hub = WaitHub()
        hub.add(Waiter(job_id, wake=event.set))
        ids = hub.take_unchecked()          # look these up in one query...
        hub.settle(ids, jobs)               # ...and wake the waiters of final ones
    """

    def __init__(self) -> None:
        self._waiters: dict[str, list[Waiter]] = {}
        self._queue_of: dict[str, str] = {}  # job id -> its queue, once looked up
        self._unchecked: set[str] = set()
        #: Lookups made for waiters (for tests and the curious).
        self.lookups = 0

    def __len__(self) -> int:
        return len(self._waiters)

    def waited(self) -> list[str]:
        """The ids of the jobs waited for."""
        return list(self._waiters)

    def add(self, waiter: Waiter) -> None:
        """A new waiter: its job is looked up in the next batch."""
        self._waiters.setdefault(waiter.job_id, []).append(waiter)
        self._unchecked.add(waiter.job_id)

    def discard(self, waiter: Waiter) -> None:
        """A waiter that stopped waiting (timed out, cancelled)."""
        waiters = self._waiters.get(waiter.job_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._forget(waiter.job_id)

    def _forget(self, job_id: str) -> None:
        self._waiters.pop(job_id, None)
        self._queue_of.pop(job_id, None)
        self._unchecked.discard(job_id)

    def notified(self, ids: Iterable[str]) -> None:
        """These jobs reached a final state: look up those we wait for."""
        self._unchecked.update(i for i in ids if i in self._waiters)

    def recheck(self, queue: str | None = None) -> None:
        """Look up every waited job (of ``queue`` only, if given) in the next batch."""
        self._unchecked.update(
            i for i in self._waiters if queue is None or self._queue_of.get(i) == queue
        )

    def take_unchecked(self) -> list[str]:
        ids = sorted(self._unchecked)
        self._unchecked.clear()
        if ids:
            self.lookups += 1
        return ids

    def queues(self) -> set[str]:
        """The queues of the jobs waited for (as far as they were looked up)."""
        return set(self._queue_of.values())

    def settle(self, asked: Iterable[str], jobs: Iterable[Job]) -> list[Waiter]:
        """Record a lookup of ``asked`` that found ``jobs``: the waiters of final and of
        missing jobs are done (returned, to be woken); the others wait on."""
        found = {job.id: job for job in jobs}
        done: list[Waiter] = []
        for job_id in asked:
            waiters = self._waiters.get(job_id)
            if not waiters:
                continue
            job = found.get(job_id)
            if job is not None and job.status not in FINAL_STATES:
                self._queue_of[job_id] = job.queue
                continue
            for waiter in waiters:
                if job is None:
                    waiter.error = JobNotFound(f"no job with id {job_id}")
                else:
                    waiter.job = job
                done.append(waiter)
            self._forget(job_id)
        return done

    def fail(self, asked: Iterable[str], error: KyuError) -> list[Waiter]:
        """A lookup of ``asked`` failed: their waiters are done, with ``error``."""
        done: list[Waiter] = []
        for job_id in asked:
            for waiter in self._waiters.get(job_id, []):
                waiter.error = error
                done.append(waiter)
            self._forget(job_id)
        return done
