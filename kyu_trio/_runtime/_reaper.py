"""The reaper: rescues jobs whose worker was lost, and repairs ids missing from the broker."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import trio

from .._job import Job, JobStatus
from .._ports import Failure
from .._retry import RetryPolicy
from ._outage import Outage
from ._outcomes import decide_failure
from ._service import Context, ticker

BATCH = 1000
#: Pending rows checked against the broker per pass; the sweep resumes where it stopped.
SWEEP_PER_PASS = 20_000
#: How long the sweep waits before looking again at pending ids the broker lacks: longer
#: than a fetcher's pop-to-claim, so that ids in flight are not pushed twice (seconds).
SWEEP_SETTLE = 0.25


def lost_worker_message(job: Job) -> str:
    return f"worker lost while running (attempt {job.attempt})"


class Reaper:
    def __init__(
        self, context: Context, *, interval: float, stale_after: float, policy: RetryPolicy
    ) -> None:
        self._ctx = context
        self._interval = interval
        self._stale_after = timedelta(seconds=stale_after)
        self._policy = policy
        self._sweep_cursor = 0

    async def run_once(self) -> int:
        """One pass: rescue stale running jobs, then check a slice of pending jobs against
        the broker. Returns how many jobs were rescued (failed with a retry due, or dead)."""
        rescued = 0
        while True:
            stale, written = await self._rescue_batch()
            rescued += written
            if len(stale) < BATCH:
                break
        await self._sweep()
        return rescued

    async def _rescue_batch(self) -> tuple[list[Job], int]:
        """A lost worker's job fails like any other run (the same retry decision and
        backoff), written with the same write as a worker's failure, fenced by the lost
        worker's own lease: a worker that was only slow and comes back cannot then
        overwrite the rescue, nor the rescue a result it recorded meanwhile."""
        ctx = self._ctx
        now = ctx.clock.now()
        stale = await ctx.store.stale_jobs(ctx.queue, now, now - self._stale_after, BATCH)
        by_worker: dict[str, list[tuple[Job, Failure]]] = defaultdict(list)
        for job in stale:
            failure = decide_failure(
                job, lost_worker_message(job), now, self._policy, outcome="lost"
            )
            by_worker[job.locked_by or ""].append((job, failure))
        written = 0
        for worker_id, decided in by_worker.items():
            done = set(await ctx.store.fail_jobs([f for _, f in decided], worker_id, now))
            for job, failure in decided:
                if job.id in done:
                    self._log_rescue(job, failure)
            written += len(done)
            dead = sum(1 for job, f in decided if job.id in done and f.status is JobStatus.DEAD)
            ctx.metrics.rescued.inc(len(done))
            ctx.metrics.lost(dead)
        return stale, written

    def _log_rescue(self, job: Job, failure: Failure) -> None:
        extra = {"job_id": job.id, "job_type": job.job_type, "attempt": job.attempt}
        if failure.status is JobStatus.DEAD:
            self._ctx.log.error(
                "job %s is dead: its worker was lost on its last try",
                job.id,
                extra={**extra, "kyu_event": "dead"},
            )
        else:
            self._ctx.log.warning(
                "rescued job %s from a lost worker; retry due at %s",
                job.id,
                failure.due.isoformat() if failure.due else "now",
                extra={**extra, "kyu_event": "rescued"},
            )

    async def _sweep(self) -> None:
        """Push pending jobs that the broker does not hold (a push that failed after the
        row was committed). Bounded per pass; a full sweep may span several passes."""
        ctx = self._ctx
        checked = 0
        while checked < SWEEP_PER_PASS:
            page = await ctx.store.pending_after(ctx.queue, self._sweep_cursor, BATCH)
            if not page:
                self._sweep_cursor = 0
                return
            missing = await ctx.broker.missing(ctx.queue, [r.id for r in page])
            if missing:
                # A fetcher may have popped some of these a moment ago and be claiming
                # them now (under load, 2 processes had 50 to 250 ids in flight): look
                # again once such a claim has had time to finish, and push only those
                # still missing and still pending. Pushing an id in flight would not lose
                # anything, but its second pop claims nothing and costs a round trip.
                await trio.sleep(SWEEP_SETTLE)
                missing = await ctx.broker.missing(ctx.queue, missing)
                lost = await ctx.store.pending_among(ctx.queue, missing) if missing else []
                if lost:
                    await ctx.broker.push(ctx.queue, lost)
                    ctx.log.warning("pushed %d pending jobs missing from the broker", len(lost))
            self._sweep_cursor = page[-1].seq
            checked += len(page)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        outage = Outage(self._ctx.log, f"reaper of {self._ctx.queue!r}")
        await ticker(
            self.run_once,
            self._interval,
            outage,
            first_after_interval=True,
            task_status=task_status,
        )
