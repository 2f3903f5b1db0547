"""Pure: what a finished run means for its job (complete, retry later, dead, requeue)."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from .._job import Job, JobStatus
from .._ports import Failure, Lease
from .._retry import RetryPolicy

MAX_ERROR_BYTES = 4096


class Kind(enum.Enum):
    COMPLETE = "complete"
    FAIL = "fail"
    REQUEUE = "requeue"


@attrs.frozen
class Outcome:
    kind: Kind
    job: Job
    duration: float
    failure: Failure | None = None

    @property
    def lease(self) -> Lease:
        return Lease(self.job.id, self.job.attempt)


def error_message(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, cut to 4 KiB of UTF-8."""
    text = str(exc)
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    raw = message.encode("utf-8", "replace")
    if len(raw) > MAX_ERROR_BYTES:
        message = raw[: MAX_ERROR_BYTES - 3].decode("utf-8", "ignore") + "..."
    return message.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL


def timeout_message(job_timeout: float) -> str:
    return f"TimeoutError: timed out after {float(job_timeout)}s"


def decide_failure(job: Job, message: str, now: datetime, policy: RetryPolicy) -> Failure:
    """Retry after backoff while retries remain (``max_retries=N`` allows N+1 runs), else dead."""
    lease = Lease(job.id, job.attempt)
    if job.retry_count < job.max_retries:
        return Failure(lease, JobStatus.FAILED, message, policy.next_due(job.retry_count, now))
    return Failure(lease, JobStatus.DEAD, message)
