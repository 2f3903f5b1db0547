"""An in-memory `Store` with the same conditional transitions as PostgreSQL.

No threads and no I/O, so the runtime can be tested under `trio.testing.MockClock`.
The conformance suite runs the same tests against this and `PostgresStore`.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeGuard

import attrs
import trio

from .._cron import CronEntry, CronState, cron_job, initial_tick
from .._job import FINAL_STATES, READY_STATES, Attempt, Job, JobStatus
from .._ports import (
    CancelOutcome,
    CancelResult,
    Failure,
    Fence,
    Held,
    LeaderInfo,
    Lease,
    Limit,
    LimitedClaim,
    NewJob,
    Progress,
    QueueStats,
    Ready,
)
from .._processes import ProcessInfo
from .._validation import decode_payload


def _new_row(new: NewJob, now: datetime) -> Job:
    """The row an insert writes for ``new``."""
    return Job(
        id=new.id,
        queue=new.queue,
        job_type=new.job_type,
        payload=decode_payload(new.payload),
        status=new.status,
        priority=new.priority,
        scheduled_at=new.scheduled_at,
        max_retries=new.max_retries,
        retry_count=0,
        error_message=None,
        locked_by=None,
        locked_at=None,
        completed_at=None,
        job_timeout=new.job_timeout,
        created_at=now,
        updated_at=now,
        unique_key=new.unique_key,
        trace_context=new.trace_context,
    )


class MemoryStore:
    """Jobs kept in a dict. Every method is a checkpoint, as a real store's would be."""

    def __init__(self, attempts_kept: int = 20) -> None:
        #: Rows as `list_jobs` returns them: without their attempt history.
        self.jobs: dict[str, Job] = {}
        self._seq: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._attempts_kept = attempts_kept
        # Job id -> its unique_key, for the jobs enqueued with one.
        self._unique_keys: dict[str, str] = {}
        # Runs that did not complete, as PostgreSQL's kyu_attempts holds them.
        self._history: defaultdict[str, list[Attempt]] = defaultdict(list)
        # Paused queues (kyu_queues), and limits by (queue, job type) with the recent
        # starts of rate-limited types, oldest first (kyu_limits).
        self._paused: set[str] = set()
        self._limits: dict[tuple[str, str], Limit] = {}
        self._starts: dict[tuple[str, str], list[datetime]] = {}
        # Queue -> its maintenance lease: holder, term, expires_at (kyu_leaders).
        self._leaders: dict[str, tuple[str, int, datetime]] = {}
        # (queue, name) -> the cron entry's row (kyu_cron).
        self._cron: dict[tuple[str, str], CronState] = {}
        # What `listen_enqueued` registered: told of each running job cancelled.
        self._cancel_listeners: list[Callable[[list[str]], None]] = []
        # (queue, process id) -> (its row, expires_at) (kyu_processes).
        self._processes: dict[tuple[str, str], tuple[ProcessInfo, datetime]] = {}

    def _record(self, job: Job, now: datetime, outcome: str, failure: Failure | None) -> None:
        runs = self._history[job.id]
        runs.append(
            Attempt(
                attempt=job.attempt,
                worker_id=job.locked_by,
                started_at=job.locked_at,
                finished_at=now,
                outcome=outcome,
                error=failure.error_message if failure else None,
                traceback=failure.traceback if failure else None,
            )
        )
        del runs[: -self._attempts_kept]

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    def _ready(self, job: Job) -> Ready:
        return Ready(job.id, job.priority, self._seq[job.id])

    def _held(self, lease: Lease, worker_id: str) -> Job | None:
        job = self.jobs.get(lease.id)
        if (
            job is None
            or job.status is not JobStatus.RUNNING
            or job.locked_by != worker_id
            or job.attempt != lease.attempt
        ):
            return None
        return job

    def _change_held(
        self, leases: Sequence[Lease], worker_id: str, change: Callable[[Job], Job]
    ) -> list[Job]:
        """Apply ``change`` to the jobs ``worker_id`` still holds under these leases (the
        fence every worker write has); return the changed jobs."""
        changed = []
        for lease in leases:
            job = self._held(lease, worker_id)
            if job is not None:
                job = self.jobs[job.id] = change(job)
                changed.append(job)
        return changed

    def _enqueue(self, job: Job) -> Ready:
        """Store ``job`` (pending) with a new sequence number: the back of its priority."""
        self.jobs[job.id] = job
        self._seq[job.id] = next(self._counter)
        return self._ready(job)

    async def insert_jobs(
        self,
        jobs: Sequence[NewJob],
        now: datetime,
        after_commit: Callable[[list[Ready]], None] | None = None,
        *,
        again: bool = False,
        existing: dict[str, str] | None = None,
    ) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        ready = []
        for new in jobs:
            if again and (earlier := self.jobs.get(new.id)) is not None:
                if earlier.status is JobStatus.PENDING:
                    ready.append(self._ready(earlier))
                continue
            if new.unique_key is not None:
                holder = self._unique_holder(new.queue, new.unique_key)
                if holder is not None:
                    if existing is not None:
                        existing[new.id] = holder
                    continue
                self._unique_keys[new.id] = new.unique_key
            job = self.jobs[new.id] = _new_row(new, now)
            self._seq[job.id] = next(self._counter)
            if job.status is JobStatus.PENDING:
                ready.append(self._ready(job))
        if after_commit is not None:
            after_commit(ready)
        return ready

    def _unique_holder(self, queue: str, key: str) -> str | None:
        """The unfinished job of ``queue`` holding ``key`` (what PostgreSQL's partial
        unique index of migration 005 enforces)."""
        for job_id, held in self._unique_keys.items():
            job = self.jobs.get(job_id)
            if (
                held == key
                and job is not None
                and job.queue == queue
                and job.status not in FINAL_STATES
            ):
                return job_id
        return None

    async def get_job(self, job_id: str) -> Job | None:
        await trio.lowlevel.checkpoint()
        job = self.jobs.get(job_id)
        if job is None:
            return None
        runs = list(self._history.get(job_id, ()))
        if job.status is JobStatus.COMPLETED:
            runs.append(
                Attempt(job.attempt, job.locked_by, job.locked_at, job.completed_at, "completed")
            )
        return attrs.evolve(job, attempts=tuple(runs[-self._attempts_kept :]))

    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        await trio.lowlevel.checkpoint()
        return [job for job in (self.jobs.get(i) for i in dict.fromkeys(ids)) if job is not None]

    async def cancel_job(self, job_id: str, now: datetime) -> CancelResult:
        results = await self.cancel_jobs([job_id], now)
        return results.get(job_id, CancelResult(CancelOutcome.NOT_FOUND))

    async def cancel_jobs(self, ids: Sequence[str], now: datetime) -> dict[str, CancelResult]:
        await trio.lowlevel.checkpoint()
        # No checkpoint from here on: every row changes at once, as in one statement.
        results: dict[str, CancelResult] = {}
        told: list[str] = []
        for job_id in sorted(set(ids)):
            job = self.jobs.get(job_id)
            if job is None:
                continue
            running = job.status is JobStatus.RUNNING
            if job.status not in READY_STATES and not running:
                results[job_id] = CancelResult(CancelOutcome.NOT_CANCELLABLE, job.queue)
                continue
            self.jobs[job_id] = attrs.evolve(job, status=JobStatus.CANCELLED, updated_at=now)
            if running:
                # As PostgreSQL's CANCEL_JOBS: the run joins the history, and whoever
                # listens is told at "commit" (here, at once).
                lease = Lease(job.id, job.attempt)
                message = "Cancelled: cancelled while running"
                stopped = Failure(lease, JobStatus.CANCELLED, message, outcome="cancelled")
                self._record(job, now, "cancelled", stopped)
                told.append(f"{job.id} {job.queue}")
            results[job_id] = CancelResult(CancelOutcome.CANCELLED, job.queue)
        if told:
            for listener in list(self._cancel_listeners):
                listener(told)
        return results

    async def delete_jobs(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        await trio.lowlevel.checkpoint()
        deleted = []
        for job_id in sorted(set(ids)):
            job = self.jobs.get(job_id)
            if job is None or job.status is JobStatus.RUNNING:
                continue
            self._forget(job_id)
            deleted.append((job_id, job.queue))
        return deleted

    def _forget(self, job_id: str) -> None:
        """Delete a job's row, with its history (ON DELETE CASCADE) and unique key."""
        del self.jobs[job_id]
        self._seq.pop(job_id, None)
        self._history.pop(job_id, None)
        self._unique_keys.pop(job_id, None)

    async def dead_jobs(self, queue: str, limit: int) -> list[Job]:
        await trio.lowlevel.checkpoint()
        dead = [j for j in self.jobs.values() if j.queue == queue and j.status is JobStatus.DEAD]
        dead.sort(key=lambda j: j.updated_at, reverse=True)
        return dead[:limit]

    async def claim_jobs(
        self, queue: str, ids: Sequence[str], worker_id: str, now: datetime
    ) -> list[Job]:
        await trio.lowlevel.checkpoint()
        claimed: list[Job] = []
        if queue in self._paused:
            return claimed
        for job_id in dict.fromkeys(ids):
            job = self.jobs.get(job_id)
            if not self._ready_now(job, queue, now) or (queue, job.job_type) in self._limits:
                continue
            job = self._claim_now(job, worker_id, now)
            claimed.append(job)
        return claimed

    def _ready_now(self, job: Job | None, queue: str, now: datetime) -> TypeGuard[Job]:
        return (
            job is not None
            and job.queue == queue
            and job.status in READY_STATES
            and (job.status is JobStatus.PENDING or job.scheduled_at <= now)
        )

    def _claim_now(self, job: Job, worker_id: str, now: datetime) -> Job:
        job = attrs.evolve(
            job,
            status=JobStatus.RUNNING,
            locked_by=worker_id,
            locked_at=now,
            heartbeat_at=now,
            attempt=job.attempt + 1,
            updated_at=now,
        )
        self.jobs[job.id] = job
        return job

    async def claimed_by(self, queue: str, ids: Sequence[str], worker_id: str) -> list[Job]:
        await trio.lowlevel.checkpoint()
        found = (self.jobs.get(job_id) for job_id in dict.fromkeys(ids))
        return [
            job
            for job in found
            if job is not None
            and job.queue == queue
            and job.status is JobStatus.RUNNING
            and job.locked_by == worker_id
        ]

    async def complete_jobs(
        self,
        leases: Sequence[Lease],
        worker_id: str,
        now: datetime,
        results: Sequence[str | None] | None = None,
    ) -> list[str]:
        await trio.lowlevel.checkpoint()
        by_id = dict(zip((lease.id for lease in leases), results or (), strict=False))

        def complete(job: Job) -> Job:
            text = by_id.get(job.id)
            return attrs.evolve(
                job,
                status=JobStatus.COMPLETED,
                completed_at=now,
                updated_at=now,
                result=None if text is None else json.loads(text),
            )

        return [job.id for job in self._change_held(leases, worker_id, complete)]

    async def fail_jobs(
        self, failures: Sequence[Failure], worker_id: str, now: datetime
    ) -> list[str]:
        await trio.lowlevel.checkpoint()
        by_id = {failure.lease.id: failure for failure in failures}

        def fail(job: Job) -> Job:
            failure = by_id[job.id]
            self._record(job, now, failure.outcome, failure)
            if failure.status is JobStatus.DEAD:
                return attrs.evolve(
                    job, status=JobStatus.DEAD, error_message=failure.error_message, updated_at=now
                )
            assert failure.due is not None
            if failure.status is JobStatus.SCHEDULED:  # a snooze: no retry spent
                return attrs.evolve(
                    job, status=JobStatus.SCHEDULED, scheduled_at=failure.due, updated_at=now
                )
            return attrs.evolve(
                job,
                status=JobStatus.FAILED,
                scheduled_at=failure.due,
                retry_count=job.retry_count + 1,
                error_message=failure.error_message,
                updated_at=now,
            )

        return [job.id for job in self._change_held([f.lease for f in failures], worker_id, fail)]

    async def requeue_jobs(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        held = self._change_held(leases, worker_id, lambda job: job)
        for job in held:
            self._record(job, now, "requeued", None)
        return [
            self._enqueue(
                attrs.evolve(job, status=JobStatus.PENDING, scheduled_at=now, updated_at=now)
            )
            for job in held
        ]

    async def heartbeat(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> dict[str, JobStatus | None]:
        await trio.lowlevel.checkpoint()
        self._change_held(leases, worker_id, lambda job: attrs.evolve(job, heartbeat_at=now))
        lost: dict[str, JobStatus | None] = {}
        for lease in leases:
            if self._held(lease, worker_id) is None:
                job = self.jobs.get(lease.id)
                lost[lease.id] = None if job is None else job.status
        return lost

    async def promote_due(self, queue: str, now: datetime, limit: int) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        due = sorted(
            (
                j
                for j in self.jobs.values()
                if j.queue == queue
                and j.status in (JobStatus.SCHEDULED, JobStatus.FAILED)
                and j.scheduled_at <= now
            ),
            key=lambda j: (j.scheduled_at, self._seq[j.id]),
        )[:limit]
        return [
            self._enqueue(attrs.evolve(job, status=JobStatus.PENDING, updated_at=now))
            for job in due
        ]

    async def stale_jobs(
        self, queue: str, now: datetime, stale_before: datetime, limit: int
    ) -> list[Job]:
        await trio.lowlevel.checkpoint()
        stale = [
            j
            for j in self.jobs.values()
            if j.queue == queue
            and j.status is JobStatus.RUNNING
            and j.heartbeat_at is not None
            and j.heartbeat_at < stale_before
            and j.locked_at is not None
            and j.locked_at + timedelta(seconds=j.job_timeout) < now
        ]
        stale.sort(key=lambda j: j.heartbeat_at or now)
        return stale[:limit]

    async def pending_after(self, queue: str, after_seq: int, limit: int) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        pending = sorted(
            (
                self._ready(j)
                for j in self.jobs.values()
                if j.queue == queue
                and j.status is JobStatus.PENDING
                and self._seq[j.id] > after_seq
            ),
            key=lambda r: r.seq,
        )
        return pending[:limit]

    async def queue_stats(self, queue: str, now: datetime) -> QueueStats:
        await trio.lowlevel.checkpoint()
        counts = dict.fromkeys(JobStatus, 0)
        oldest: datetime | None = None
        for job in self.jobs.values():
            if job.queue != queue:
                continue
            counts[job.status] += 1
            if job.status in READY_STATES and job.scheduled_at <= now:
                oldest = job.scheduled_at if oldest is None else min(oldest, job.scheduled_at)
        return QueueStats(counts, oldest, queue in self._paused)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def schema_version(self) -> tuple[int, int]:
        await trio.lowlevel.checkpoint()
        return (0, 0)  # no schema: nothing to migrate

    def _restart(self, job: Job, now: datetime) -> Ready:
        return self._enqueue(
            attrs.evolve(
                job, status=JobStatus.PENDING, retry_count=0, scheduled_at=now, updated_at=now
            )
        )

    async def retry_jobs(self, ids: Sequence[str], now: datetime) -> list[tuple[Ready, str]]:
        await trio.lowlevel.checkpoint()
        out = []
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job is not None and job.status in (JobStatus.DEAD, JobStatus.FAILED):
                out.append((self._restart(job, now), job.queue))
        return out

    async def retry_dead(self, queue: str, now: datetime, limit: int) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        dead = sorted(
            (j for j in self.jobs.values() if j.queue == queue and j.status is JobStatus.DEAD),
            key=lambda j: j.updated_at,
        )[:limit]
        return [self._restart(j, now) for j in dead]

    async def list_jobs(
        self, queue: str, status: JobStatus | None, job_type: str | None, limit: int
    ) -> list[Job]:
        await trio.lowlevel.checkpoint()
        jobs = [
            j
            for j in self.jobs.values()
            if j.queue == queue
            and (status is None or j.status is status)
            and (job_type is None or j.job_type == job_type)
        ]
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        return jobs[:limit]

    async def completed_since(self, queue: str, since: datetime) -> int:
        await trio.lowlevel.checkpoint()
        return sum(
            1
            for j in self.jobs.values()
            if j.queue == queue
            and j.status is JobStatus.COMPLETED
            and j.completed_at is not None
            and j.completed_at >= since
        )

    async def purge(
        self, queue: str, statuses: Sequence[JobStatus], before: datetime, limit: int
    ) -> int:
        await trio.lowlevel.checkpoint()
        old = [
            j.id
            for j in self.jobs.values()
            if j.queue == queue and j.status in statuses and j.updated_at < before
        ][:limit]
        for job_id in old:
            del self.jobs[job_id]
            self._seq.pop(job_id, None)
            self._history.pop(job_id, None)
        return len(old)

    async def pending_among(self, queue: str, ids: Sequence[str]) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        found = [
            self._ready(job)
            for job in (self.jobs.get(i) for i in ids)
            if job is not None and job.queue == queue and job.status is JobStatus.PENDING
        ]
        return sorted(found, key=lambda r: r.seq)

    # ---- the maintenance leader's lease ----

    def _fenced(self, queue: str, fence: Fence) -> bool:
        """Whether ``fence`` is the queue's lease as recorded (what a fenced write checks)."""
        held = self._leaders.get(queue)
        return held is not None and held[:2] == (fence.holder, fence.term)

    async def lead(self, queue: str, holder: str, now: datetime, ttl: float) -> Fence | None:
        await trio.lowlevel.checkpoint()
        until = now + timedelta(seconds=ttl)
        held = self._leaders.get(queue)
        if held is None:
            self._leaders[queue] = (holder, 1, until)
            return Fence(holder, 1)
        old_holder, term, expires_at = held
        if old_holder != holder and expires_at > now:
            return None
        term += old_holder != holder
        self._leaders[queue] = (holder, term, until)
        return Fence(holder, term)

    async def resign(self, queue: str, fence: Fence) -> None:
        await trio.lowlevel.checkpoint()
        if self._fenced(queue, fence):
            self._leaders[queue] = (fence.holder, fence.term, datetime.min.replace(tzinfo=UTC))

    async def leader(self, queue: str) -> LeaderInfo | None:
        await trio.lowlevel.checkpoint()
        held = self._leaders.get(queue)
        return None if held is None else LeaderInfo(*held)

    # ---- retention (the pruner) ----

    async def prune(self, queue: str, status: JobStatus, before: datetime, limit: int) -> int:
        from .._errors import KyuError  # here, to leave the shared imports alone

        await trio.lowlevel.checkpoint()
        if status not in FINAL_STATES:
            raise KyuError(f"only completed, cancelled and dead jobs can be pruned, not {status}")
        old: list[tuple[datetime, str]] = []
        for job in self.jobs.values():
            when = job.completed_at if status is JobStatus.COMPLETED else job.updated_at
            if job.queue == queue and job.status is status and when is not None and when < before:
                old.append((when, job.id))
        old.sort()
        for _, job_id in old[:limit]:
            del self.jobs[job_id]
            self._seq.pop(job_id, None)
            self._history.pop(job_id, None)
            self._unique_keys.pop(job_id, None)
        return len(old[:limit])

    # ---- cron: periodic jobs ----

    async def sync_cron(
        self, queue: str, entries: Sequence[CronEntry], now: datetime, fence: Fence
    ) -> bool:
        await trio.lowlevel.checkpoint()
        if not self._fenced(queue, fence):
            return False
        names = set()
        for entry in entries:
            names.add(entry.name)
            old = self._cron.get((queue, entry.name))
            row = CronState(
                queue=queue,
                name=entry.name,
                schedule=entry.schedule,
                timezone=entry.timezone,
                job_type=entry.job_type,
                payload=entry.payload,
                priority=entry.priority,
                max_retries=entry.max_retries,
                job_timeout=entry.job_timeout,
                missed=entry.missed,
                last_tick=initial_tick(entry, now) if old is None else old.last_tick,
                registered=True,
                updated_at=now,
            )
            if old is None or attrs.evolve(old, updated_at=now) != row:
                self._cron[queue, entry.name] = row
        for key, row in self._cron.items():
            if key[0] == queue and row.registered and key[1] not in names:
                self._cron[key] = attrs.evolve(row, registered=False, updated_at=now)
        return True

    async def fire_cron(
        self,
        queue: str,
        name: str,
        expected: datetime,
        tick: datetime,
        job: NewJob | None,
        fence: Fence,
        now: datetime,
    ) -> list[Ready] | None:
        await trio.lowlevel.checkpoint()
        row = self._cron.get((queue, name))
        if row is None or row.last_tick != expected or not self._fenced(queue, fence):
            return None
        # No checkpoint from here on: the row and the job change together, as in one
        # PostgreSQL statement.
        self._cron[queue, name] = attrs.evolve(row, last_tick=tick, updated_at=now)
        if job is None:
            return []
        self.jobs[job.id] = _new_row(job, now)
        self._seq[job.id] = next(self._counter)
        return [self._ready(self.jobs[job.id])] if job.status is JobStatus.PENDING else []

    async def cron_states(self, queue: str) -> list[CronState]:
        await trio.lowlevel.checkpoint()
        return sorted((r for (q, _), r in self._cron.items() if q == queue), key=lambda r: r.name)

    async def run_cron_now(
        self, queue: str, name: str, job_id: str, now: datetime, default_job_timeout: float
    ) -> Ready | None:
        await trio.lowlevel.checkpoint()
        row = self._cron.get((queue, name))
        if row is None:
            return None
        job = cron_job(row, queue, now, job_id, default_job_timeout)
        self.jobs[job_id] = _new_row(job, now)
        self._seq[job_id] = next(self._counter)
        return self._ready(self.jobs[job_id])

    # ---- pausing a queue, and limits per job type ----

    async def set_paused(self, queue: str, paused: bool, now: datetime) -> None:
        await trio.lowlevel.checkpoint()
        if paused:
            self._paused.add(queue)
        else:
            self._paused.discard(queue)

    async def is_paused(self, queue: str) -> bool:
        await trio.lowlevel.checkpoint()
        return queue in self._paused

    async def held_among(self, queue: str, ids: Sequence[str], now: datetime) -> Held:
        await trio.lowlevel.checkpoint()
        ready = [job for job in map(self.jobs.get, ids) if self._ready_now(job, queue, now)]
        if ready and queue in self._paused:
            return Held(True, {})
        limited: dict[str, list[str]] = {}
        for job in ready:
            if (queue, job.job_type) in self._limits:
                limited.setdefault(job.job_type, []).append(job.id)
        return Held(False, limited)

    async def set_limits(
        self, queue: str, limits: dict[str, Limit], unlimited: Sequence[str], now: datetime
    ) -> None:
        await trio.lowlevel.checkpoint()
        for job_type, limit in limits.items():
            self._limits[queue, job_type] = limit
        for job_type in unlimited:
            self._limits.pop((queue, job_type), None)
            self._starts.pop((queue, job_type), None)

    async def claim_limited(
        self, queue: str, job_type: str, ids: Sequence[str], worker_id: str, now: datetime
    ) -> LimitedClaim:
        await trio.lowlevel.checkpoint()
        limit = self._limits.get((queue, job_type))
        candidates = [
            job
            for job in map(self.jobs.get, dict.fromkeys(ids))
            if self._ready_now(job, queue, now) and job.job_type == job_type
        ]
        candidates.sort(key=lambda j: (-j.priority, self._seq[j.id]))
        if queue in self._paused:
            return LimitedClaim([], None)
        if limit is None:  # no longer limited
            return LimitedClaim([self._claim_now(j, worker_id, now) for j in candidates], None)
        room = len(candidates)
        if limit.concurrency is not None:
            running = sum(
                1
                for j in self.jobs.values()
                if j.queue == queue and j.job_type == job_type and j.status is JobStatus.RUNNING
            )
            room = min(room, max(limit.concurrency - running, 0))
        recent: list[datetime] = []
        starts = self._starts.get((queue, job_type), [])
        clock = max([now, *starts])  # as PostgreSQL: never before the last recorded start
        if limit.rate_count is not None and limit.rate_per is not None:
            window = timedelta(seconds=limit.rate_per)
            recent = [t for t in starts if t > clock - window]
            room = min(room, max(limit.rate_count - len(recent), 0))
        claimed = [self._claim_now(j, worker_id, now) for j in candidates[:room]]
        next_start = None
        if limit.rate_count is not None and limit.rate_per is not None:
            kept = (recent + [clock] * len(claimed))[-limit.rate_count :]
            self._starts[queue, job_type] = kept
            if len(kept) >= limit.rate_count:
                next_start = kept[0] + timedelta(seconds=limit.rate_per)
        return LimitedClaim(claimed, next_start)

    # ---- progress of running jobs (issue 14) ----

    async def set_progress(self, updates: Sequence[Progress], worker_id: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        written = []
        for update in updates:
            job = self.jobs.get(update.lease.id)
            # The run's lease, whatever the status: as PostgreSQL's SET_PROGRESS.
            if job is None or job.locked_by != worker_id or job.attempt != update.lease.attempt:
                continue
            self.jobs[job.id] = attrs.evolve(job, progress=json.loads(update.progress))
            written.append(job.id)
        return written

    # ---- cancelling running jobs (issue 14) ----

    async def listen_enqueued(
        self,
        listening: Callable[[], None],
        deliver: Callable[[list[str]], None],
        cancelled: Callable[[list[str]], None] | None = None,
    ) -> None:
        """As `PostgresStore.listen_enqueued`, until cancelled. Nothing is ever enqueued in
        a caller's transaction here, so ``deliver`` is never called; ``cancelled`` is
        called by `cancel_job` as it cancels a running job (``"<id> <queue>"``)."""
        if cancelled is not None:
            self._cancel_listeners.append(cancelled)
        try:
            listening()
            await trio.sleep_forever()
        finally:
            if cancelled is not None:
                self._cancel_listeners.remove(cancelled)

    # ---- which processes serve a queue ----

    async def record_process(self, queue: str, process: ProcessInfo, ttl: float) -> None:
        await trio.lowlevel.checkpoint()
        row = attrs.evolve(process, leader=False)  # not stored: read from the lease
        expires_at = process.last_seen + timedelta(seconds=ttl)
        self._processes[queue, process.process_id] = (row, expires_at)

    async def remove_process(self, queue: str, process_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._processes.pop((queue, process_id), None)

    async def processes(self, queue: str, now: datetime) -> list[ProcessInfo]:
        await trio.lowlevel.checkpoint()
        lease = self._leaders.get(queue)
        leader = lease[0] if lease is not None and lease[2] > now else None
        live = [
            attrs.evolve(row, leader=row.process_id == leader)
            for (q, _), (row, expires_at) in self._processes.items()
            if q == queue and expires_at > now
        ]
        return sorted(live, key=lambda p: (p.started_at, p.process_id))

    async def prune_processes(self, queue: str, before: datetime) -> int:
        await trio.lowlevel.checkpoint()
        gone = [
            key
            for key, (_, expires_at) in self._processes.items()
            if key[0] == queue and expires_at < before
        ]
        for key in gone:
            del self._processes[key]
        return len(gone)
