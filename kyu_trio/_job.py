"""The data a job carries: `Job`, `JobStatus` and the request to enqueue one."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs


class JobStatus(enum.StrEnum):
    """Where a job is in its life; the value is what the ``status`` column stores.

    Example::

        job = await queue.inspect(job_id)
        if job.status is JobStatus.DEAD:
            print(job.error_message)
    """

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    FAILED = "failed"
    COMPLETED = "completed"
    DEAD = "dead"
    CANCELLED = "cancelled"


#: States from which a worker may claim a job once it is due (and `cancel_job` cancel it).
READY_STATES = frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.FAILED})
#: States a job never leaves.
FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED})


@attrs.frozen
class Job:
    """A snapshot of one row of ``kyu_jobs``.

    ``retry_count`` counts retries so far (0 after a first-try success); ``attempt``
    counts claims and is the token that fences a worker's later writes.

    Example::

        job = await queue.inspect(job_id)
        print(job.status, job.retry_count, job.error_message)
    """

    id: str
    queue: str
    job_type: str
    payload: str
    status: JobStatus
    priority: int
    scheduled_at: datetime
    max_retries: int
    retry_count: int
    error_message: str | None
    locked_by: str | None
    locked_at: datetime | None
    completed_at: datetime | None
    job_timeout: float
    created_at: datetime
    updated_at: datetime
    attempt: int = 0
    heartbeat_at: datetime | None = None


@attrs.frozen
class EnqueueRequest:
    """One job to enqueue, with the same options as `Queue.enqueue`.

    Example::

        EnqueueRequest("send_email", '{"to": "a@b.c"}', priority=5)
    """

    job_type: str
    payload: str
    priority: int = 0
    max_retries: int = 3
    scheduled_at: datetime | None = None
    job_timeout: float | None = None
