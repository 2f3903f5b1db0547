"""`Stats`: a snapshot of one queue, for dashboards, the CLI and scripts."""

from __future__ import annotations

import attrs

from ._job import JobStatus


@attrs.frozen
class Stats:
    """What `Queue.stats` reports.

    Example::

        stats = await queue.stats()
        print(stats.counts[JobStatus.PENDING], stats.depth, stats.lag_seconds)
    """

    queue: str
    counts: dict[JobStatus, int]
    #: Job ids waiting in Redis.
    depth: int
    #: Age of the oldest due job that has not started (0 when none waits).
    lag_seconds: float
    #: Jobs completed in the last 60 seconds.
    completed_last_minute: int
    #: Whether the queue is paused (`Queue.pause`): no job of it starts until resumed.
    paused: bool = False
