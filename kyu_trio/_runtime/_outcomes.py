"""Pure: what a finished run means for its job (complete, retry later, dead, requeue)."""

from __future__ import annotations

import enum
import traceback
from datetime import datetime, timedelta

import attrs

from .._job import Job, JobStatus
from .._ports import Failure, Lease
from .._retry import RetryPolicy
from .._text import storable

MAX_ERROR_BYTES = 4096
#: Most of a failure's traceback kept for the log (its innermost frames: the end).
MAX_TRACEBACK_BYTES = 16384


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
    #: The formatted traceback of a handler's exception (storable, bounded), for the log.
    traceback: str | None = None
    #: A completed run's result as JSON text (None when the handler returned None).
    result: str | None = None

    @property
    def lease(self) -> Lease:
        return Lease(self.job.id, self.job.attempt)


def error_message(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, storable in PostgreSQL and cut to 4 KiB of UTF-8.

    Never raises: an exception whose ``__str__`` fails still gets a message."""
    try:
        text = str(exc)
    except Exception as str_failed:  # a user's __str__ is user code too
        text = f"<str() of the exception raised {type(str_failed).__name__}>"
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return storable(message, MAX_ERROR_BYTES)


def format_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc``, storable, keeping its last 16 KiB (where the
    innermost frames and the message are)."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # formatting calls the exception's __str__: user code
        text = f"{type(exc).__name__} (its traceback could not be formatted)\n"
    text = storable(text)
    raw = text.encode("utf-8")
    if len(raw) > MAX_TRACEBACK_BYTES:
        text = "...\n" + raw[-MAX_TRACEBACK_BYTES:].decode("utf-8", "ignore")
    return text


def timeout_message(job_timeout: float) -> str:
    return f"TimeoutError: timed out after {float(job_timeout)}s"


def result_error_message(reason: str) -> str:
    return storable(f"ResultError: {reason}", MAX_ERROR_BYTES)


def decide_failure(
    job: Job,
    message: str,
    now: datetime,
    policy: RetryPolicy,
    *,
    outcome: str | None = None,
    traceback: str | None = None,
    delay: float | None = None,
) -> Failure:
    """Retry after backoff while retries remain (``max_retries=N`` allows N+1 runs), else dead.

    ``outcome`` is what the run's `Attempt` says: ``timed_out`` or ``lost``, or by default
    ``failed`` (a retry is due) or ``dead``. ``delay`` (seconds), when given, is the
    handler's own backoff and replaces the queue's ``policy``."""
    lease = Lease(job.id, job.attempt)
    if job.retry_count < job.max_retries:
        if delay is None:
            due = policy.next_due(job.retry_count, now)
        else:
            due = now + timedelta(seconds=delay)
        status = JobStatus.FAILED
    else:
        due, status = None, JobStatus.DEAD
    if outcome is None:
        return Failure(lease, status, message, due, traceback=traceback)
    return Failure(lease, status, message, due, outcome=outcome, traceback=traceback)


def decide_snooze(job: Job, seconds: float, now: datetime) -> Failure:
    """The job goes back to ``scheduled``, due in ``seconds``, with its retries untouched."""
    return Failure(
        Lease(job.id, job.attempt),
        JobStatus.SCHEDULED,
        f"Snooze: snoozed for {seconds}s",
        now + timedelta(seconds=seconds),
    )


def snooze_limit_message(max_snoozes: int) -> str:
    return f"Snooze: snoozed more than max_snoozes={max_snoozes} times"
