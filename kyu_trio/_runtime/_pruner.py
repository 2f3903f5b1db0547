"""The pruner: deletes finished jobs once they are older than their retention
(`Config.retention_completed`, ``retention_cancelled``, ``retention_dead``).

It runs on the queue's maintenance leader, in bounded batches: each batch is one
autocommitted DELETE of at most `PRUNE_BATCH` rows, so no statement holds row locks for
longer than one batch takes (tens of ms), and a pass stops after `PRUNE_BATCHES_PER_PASS`
batches of each status, leaving the rest to the next pass: a backlog (retention turned
on for a table of millions) is worked off over several passes, none of them long.
"""

from __future__ import annotations

from datetime import timedelta

from .._config import Config
from .._job import JobStatus
from .._ports import Fence
from .._processes import PRUNE_AFTER
from ._service import Context

#: Rows one DELETE removes at most (with their attempt history).
PRUNE_BATCH = 2000
#: Batches of each status in one pass: at most 20,000 rows of each per pass.
PRUNE_BATCHES_PER_PASS = 10


class Pruner:
    """Deletes the queue's finished jobs past their retention; `run_once` is one pass.

    Example::

        pruner = Pruner(context, config)
        deleted = await pruner.run_once(fence)
    """

    def __init__(self, context: Context, config: Config) -> None:
        self._ctx = context
        kept = {
            JobStatus.COMPLETED: config.retention_completed,
            JobStatus.CANCELLED: config.retention_cancelled,
            JobStatus.DEAD: config.retention_dead,
        }
        #: Statuses with a retention (None keeps them forever: never asked for).
        self._retention = {
            status: timedelta(seconds=seconds)
            for status, seconds in kept.items()
            if seconds is not None
        }

    async def run_once(self, fence: Fence) -> int:
        """One pass: for each status with a retention, delete batches of the queue's jobs
        that finished before ``now - retention`` until a batch comes back short or the
        pass's cap is reached; then the rows of processes gone for an hour
        (`Queue.processes`). Returns how many jobs were deleted.

        ``fence`` is not checked: deleting what is past its retention is idempotent, so a
        deposed leader that has not noticed yet and the new one may both prune for a
        moment, and each row is still deleted once (SKIP LOCKED splits the rows between
        them); no fenced write is needed.
        """
        del fence
        ctx = self._ctx
        now = ctx.clock.now()
        pruned: dict[str, int] = {}
        try:
            for status, retention in self._retention.items():
                before = now - retention
                for _ in range(PRUNE_BATCHES_PER_PASS):
                    deleted = await ctx.store.prune(ctx.queue, status, before, PRUNE_BATCH)
                    if deleted:
                        # Counted batch by batch: what was deleted stays counted if a
                        # later batch fails.
                        pruned[status.value] = pruned.get(status.value, 0) + deleted
                        ctx.metrics.pruned[status.value] += deleted
                    if deleted < PRUNE_BATCH:
                        break
            # Rows of processes that stopped without deleting theirs (killed, or cut off
            # from PostgreSQL), an hour after they expired: a few rows at most.
            await ctx.store.prune_processes(ctx.queue, now - timedelta(seconds=PRUNE_AFTER))
        finally:
            if pruned:
                counts = ", ".join(f"{status} {n}" for status, n in pruned.items())
                ctx.log.info(
                    "pruned %d finished jobs of %r past their retention (%s)",
                    sum(pruned.values()),
                    ctx.queue,
                    counts,
                    extra={"kyu_event": "pruned", "pruned": pruned},
                )
        return sum(pruned.values())
