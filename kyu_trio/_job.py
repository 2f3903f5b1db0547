"""The data a job carries: `Job`, `JobStatus` and the request to enqueue one."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

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


#: States from which a worker may claim a job once it is due (and `cancel_job` cancel it,
#: as it does a running one).
READY_STATES = frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.FAILED})
#: States a job never leaves.
FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED})

#: How a run ended, as `Attempt.outcome` says: the handler returned; it raised and a retry
#: is due; it raised on its last try; it ran out of time; shutdown put it back; the reaper
#: rescued it from a lost worker; the handler raised `Snooze`; `cancel_job` cancelled it.
ATTEMPT_OUTCOMES = frozenset(
    {"completed", "failed", "dead", "timed_out", "requeued", "lost", "snoozed", "cancelled"}
)


@attrs.frozen
class Attempt:
    """One run of a job: who ran it, when, and how it ended (``outcome``, one of
    ``completed``, ``failed``, ``dead``, ``timed_out``, ``requeued``, ``lost``,
    ``snoozed``, ``cancelled``).

    ``error`` is ``"<ExceptionType>: <message>"`` for a run that did not complete, and
    ``traceback`` the formatted traceback of a handler's exception (its last 16 KiB).

    Example::

        job = await queue.inspect(job_id)
        for a in job.attempts:
            print(a.attempt, a.outcome, a.worker_id, a.error)
    """

    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str
    error: str | None = None
    traceback: str | None = None


@attrs.frozen
class Job:
    """A snapshot of one row of ``kyu_jobs``.

    ``retry_count`` counts retries so far (0 after a first-try success); ``attempt``
    counts claims and is the token that fences a worker's later writes.

    ``payload`` is the decoded JSON value the handler receives, ``result`` what the
    handler returned (decoded JSON; None until the job completes). ``attempts`` lists
    its finished runs, oldest first (the last `Config.max_attempts_kept`): `inspect`
    fills it, listings (`list_jobs`, `dead_jobs`) leave it empty.

    Example::

        job = await queue.inspect(job_id)
        print(job.status, job.result, [a.outcome for a in job.attempts])
    """

    id: str
    queue: str
    job_type: str
    payload: Any
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
    result: Any = None
    attempts: tuple[Attempt, ...] = ()
    #: The key it was enqueued with (see unique jobs), else None.
    unique_key: str | None = None
    #: The last value its handler reported with `set_progress` (decoded JSON), else None.
    #: Read it with `inspect`: the `Job` a handler gets from `current_job()` is the
    #: snapshot its claim made, which its own reports do not change.
    progress: Any = None
    #: With the ``otel`` extra: the trace context of the span that enqueued it (JSON text
    #: of the propagator's carrier, e.g. ``{"traceparent": "00-..."}``), else None. Each
    #: run's span is a child of that span; see the tracing how-to.
    trace_context: str | None = attrs.field(default=None, repr=False)

    def set_progress(self, value: Any) -> None:
        """Report the progress of this job's run (a JSON value of at most 64 KiB), from
        its handler or middleware: ``async def``, plain ``def`` (in a thread) or asyncio.

        Returns at once, without I/O: the worker writes the latest value of each of its
        jobs at most every 0.5 s (and the last one once the run ends), so calling it in a
        tight loop is cheap. `inspect` shows it as ``progress`` within a second. Raises
        `ProgressError` for a value it cannot store, `KyuError` when this job is not the
        one running here.

        Example::

            @queue.handler("import_rows")
            async def import_rows(rows: list[dict]) -> None:
                for i, row in enumerate(rows):
                    await save(row)
                    current_job().set_progress({"done": i + 1, "total": len(rows)})
        """
        # A Job is data; reporting belongs to the runtime that runs it.
        from ._runtime._progress import report_progress

        report_progress(self, value)


@attrs.frozen
class EnqueueRequest:
    """One job to enqueue, with the same options as `Queue.enqueue`.

    Example::

        EnqueueRequest("send_email", {"to": "a@b.c"}, priority=5, unique_key="mail:a@b.c")
    """

    job_type: str
    payload: Any = None
    priority: int = 0
    max_retries: int = 3
    scheduled_at: datetime | None = None
    job_timeout: float | None = None
    unique_key: str | None = None
