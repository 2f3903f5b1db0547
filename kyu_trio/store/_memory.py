"""An in-memory `Store` with the same conditional transitions as PostgreSQL.

No threads and no I/O, so the runtime can be tested under `trio.testing.MockClock`.
The conformance suite runs the same tests against this and `PostgresStore`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import attrs
import trio

from .._job import READY_STATES, Job, JobStatus
from .._ports import (
    CancelOutcome,
    CancelResult,
    Failure,
    Lease,
    NewJob,
    QueueStats,
    Ready,
    Rescue,
)


class MemoryStore:
    """Jobs kept in a dict. Every method is a checkpoint, as a real store's would be."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._seq: dict[str, int] = {}
        self._counter = itertools.count(1)

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

    async def insert_jobs(
        self, jobs: Sequence[NewJob], now: datetime,
        after_commit: Callable[[list[Ready]], None] | None = None,
        *, again: bool = False,
    ) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        ready = []
        for new in jobs:
            if again and (earlier := self.jobs.get(new.id)) is not None:
                if earlier.status is JobStatus.PENDING:
                    ready.append(self._ready(earlier))
                continue
            job = Job(
                id=new.id, queue=new.queue, job_type=new.job_type, payload=new.payload,
                status=new.status, priority=new.priority, scheduled_at=new.scheduled_at,
                max_retries=new.max_retries, retry_count=0, error_message=None,
                locked_by=None, locked_at=None, completed_at=None,
                job_timeout=new.job_timeout, created_at=now, updated_at=now,
            )
            self.jobs[job.id] = job
            self._seq[job.id] = next(self._counter)
            if job.status is JobStatus.PENDING:
                ready.append(self._ready(job))
        if after_commit is not None:
            after_commit(ready)
        return ready

    async def get_job(self, job_id: str) -> Job | None:
        await trio.lowlevel.checkpoint()
        return self.jobs.get(job_id)

    async def cancel_job(self, job_id: str, now: datetime) -> CancelResult:
        await trio.lowlevel.checkpoint()
        job = self.jobs.get(job_id)
        if job is None:
            return CancelResult(CancelOutcome.NOT_FOUND)
        if job.status not in READY_STATES:
            return CancelResult(CancelOutcome.NOT_CANCELLABLE, job.queue)
        self.jobs[job_id] = attrs.evolve(job, status=JobStatus.CANCELLED, updated_at=now)
        return CancelResult(CancelOutcome.CANCELLED, job.queue)

    async def dead_jobs(self, queue: str, limit: int) -> list[Job]:
        await trio.lowlevel.checkpoint()
        dead = [j for j in self.jobs.values() if j.queue == queue and j.status is JobStatus.DEAD]
        dead.sort(key=lambda j: j.updated_at, reverse=True)
        return dead[:limit]

    async def claim_jobs(
        self, queue: str, ids: Sequence[str], worker_id: str, now: datetime
    ) -> list[Job]:
        await trio.lowlevel.checkpoint()
        claimed = []
        for job_id in dict.fromkeys(ids):
            job = self.jobs.get(job_id)
            if (
                job is None
                or job.queue != queue
                or job.status not in READY_STATES
                or (job.status is not JobStatus.PENDING and job.scheduled_at > now)
            ):
                continue
            job = attrs.evolve(
                job, status=JobStatus.RUNNING, locked_by=worker_id, locked_at=now,
                heartbeat_at=now, attempt=job.attempt + 1, updated_at=now,
            )
            self.jobs[job_id] = job
            claimed.append(job)
        return claimed

    async def claimed_by(self, queue: str, ids: Sequence[str], worker_id: str) -> list[Job]:
        await trio.lowlevel.checkpoint()
        found = (self.jobs.get(job_id) for job_id in dict.fromkeys(ids))
        return [
            job for job in found
            if job is not None and job.queue == queue and job.status is JobStatus.RUNNING
            and job.locked_by == worker_id
        ]

    async def complete_jobs(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> list[str]:
        await trio.lowlevel.checkpoint()
        done = []
        for lease in leases:
            job = self._held(lease, worker_id)
            if job is not None:
                self.jobs[job.id] = attrs.evolve(
                    job, status=JobStatus.COMPLETED, completed_at=now, updated_at=now
                )
                done.append(job.id)
        return done

    async def fail_jobs(
        self, failures: Sequence[Failure], worker_id: str, now: datetime
    ) -> list[str]:
        await trio.lowlevel.checkpoint()
        done = []
        for failure in failures:
            job = self._held(failure.lease, worker_id)
            if job is None:
                continue
            if failure.status is JobStatus.FAILED:
                assert failure.due is not None
                job = attrs.evolve(
                    job, status=JobStatus.FAILED, scheduled_at=failure.due,
                    retry_count=job.retry_count + 1, error_message=failure.error_message,
                    updated_at=now,
                )
            else:
                job = attrs.evolve(
                    job, status=JobStatus.DEAD, error_message=failure.error_message,
                    updated_at=now,
                )
            self.jobs[job.id] = job
            done.append(job.id)
        return done

    async def requeue_jobs(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        ready = []
        for lease in leases:
            job = self._held(lease, worker_id)
            if job is None:
                continue
            job = attrs.evolve(job, status=JobStatus.PENDING, scheduled_at=now, updated_at=now)
            self.jobs[job.id] = job
            self._seq[job.id] = next(self._counter)
            ready.append(self._ready(job))
        return ready

    async def heartbeat(self, leases: Sequence[Lease], worker_id: str, now: datetime) -> int:
        await trio.lowlevel.checkpoint()
        beats = 0
        for lease in leases:
            job = self._held(lease, worker_id)
            if job is not None:
                self.jobs[job.id] = attrs.evolve(job, heartbeat_at=now)
                beats += 1
        return beats

    async def promote_due(self, queue: str, now: datetime, limit: int) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        due = sorted(
            (
                j for j in self.jobs.values()
                if j.queue == queue
                and j.status in (JobStatus.SCHEDULED, JobStatus.FAILED)
                and j.scheduled_at <= now
            ),
            key=lambda j: (j.scheduled_at, self._seq[j.id]),
        )[:limit]
        ready = []
        for job in due:
            job = attrs.evolve(job, status=JobStatus.PENDING, updated_at=now)
            self.jobs[job.id] = job
            self._seq[job.id] = next(self._counter)
            ready.append(self._ready(job))
        return ready

    async def rescue_stale(
        self, queue: str, now: datetime, stale_before: datetime, limit: int
    ) -> Rescue:
        await trio.lowlevel.checkpoint()
        stale = sorted(
            (
                j for j in self.jobs.values()
                if j.queue == queue
                and j.status is JobStatus.RUNNING
                and j.heartbeat_at is not None
                and j.heartbeat_at < stale_before
                and j.locked_at is not None
                and j.locked_at + timedelta(seconds=j.job_timeout) < now
            ),
            key=lambda j: j.heartbeat_at or now,
        )[:limit]
        requeued, dead = [], []
        for job in stale:
            message = f"worker lost while running (attempt {job.attempt})"
            if job.retry_count < job.max_retries:
                job = attrs.evolve(
                    job, status=JobStatus.PENDING, retry_count=job.retry_count + 1,
                    error_message=message, scheduled_at=now, updated_at=now,
                )
                self._seq[job.id] = next(self._counter)
                requeued.append(self._ready(job))
            else:
                job = attrs.evolve(job, status=JobStatus.DEAD, error_message=message,
                                   updated_at=now)
                dead.append(job.id)
            self.jobs[job.id] = job
        return Rescue(requeued, dead)

    async def pending_after(self, queue: str, after_seq: int, limit: int) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        pending = sorted(
            (
                self._ready(j) for j in self.jobs.values()
                if j.queue == queue and j.status is JobStatus.PENDING
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
        return QueueStats(counts, oldest)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    def _restart(self, job: Job, now: datetime) -> Ready:
        job = attrs.evolve(job, status=JobStatus.PENDING, retry_count=0, scheduled_at=now,
                           updated_at=now)
        self.jobs[job.id] = job
        self._seq[job.id] = next(self._counter)
        return self._ready(job)

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
            j for j in self.jobs.values()
            if j.queue == queue and (status is None or j.status is status)
            and (job_type is None or j.job_type == job_type)
        ]
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        return jobs[:limit]

    async def completed_since(self, queue: str, since: datetime) -> int:
        await trio.lowlevel.checkpoint()
        return sum(
            1 for j in self.jobs.values()
            if j.queue == queue and j.status is JobStatus.COMPLETED
            and j.completed_at is not None and j.completed_at >= since
        )

    async def purge(
        self, queue: str, statuses: Sequence[JobStatus], before: datetime, limit: int
    ) -> int:
        await trio.lowlevel.checkpoint()
        old = [
            j.id for j in self.jobs.values()
            if j.queue == queue and j.status in statuses and j.updated_at < before
        ][:limit]
        for job_id in old:
            del self.jobs[job_id]
            self._seq.pop(job_id, None)
        return len(old)

    async def pending_among(self, queue: str, ids: Sequence[str]) -> list[Ready]:
        await trio.lowlevel.checkpoint()
        found = [
            self._ready(job) for job in (self.jobs.get(i) for i in ids)
            if job is not None and job.queue == queue and job.status is JobStatus.PENDING
        ]
        return sorted(found, key=lambda r: r.seq)
