"""What `Client` and `AsyncioClient` share, without I/O: the rows an enqueue writes (the
same validation as `Queue`), the statements each call runs (the same SQL as
`PostgresStore`), and what their answers mean. Each client only runs them, blocking or
awaiting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import attrs
from psycopg.rows import TupleRow

from .._config import Config
from .._cron import entry_not_found
from .._errors import JobNotFound
from .._ids import new_job_ids
from .._job import EnqueueRequest, Job, JobStatus
from .._ports import CancelOutcome, CancelResult, NewJob, QueueStats, Ready
from .._processes import ProcessInfo
from .._stats import Stats
from .._store import _queries as q
from .._store._postgres import (
    _to_job,
    _uuid_array,
    cancel_params,
    cancel_results,
    run_cron_params,
    to_processes,
)
from .._validation import check_limit, parse_job_id, validate_request
from .._waiters import result_of as result_of

T = TypeVar("T")


def new_jobs(
    items: Iterable[EnqueueRequest | tuple[str, Any]], config: Config, now: datetime
) -> list[NewJob]:
    """The rows to insert, each validated as `Queue.enqueue_many` does: one bad item
    rejects them all (`InvalidJobError`), before anything is written."""
    items = list(items)
    return [
        validate_request(item, config=config, now=now, job_id=job_id)
        for item, job_id in zip(items, new_job_ids(len(items)), strict=True)
    ]


@attrs.frozen
class Statement(Generic[T]):
    """One SQL statement and what its rows mean: each client runs it in its own way."""

    sql: str
    params: Any
    parse: Callable[[list[TupleRow]], T]


def _jobs(rows: list[TupleRow]) -> list[Job]:
    return [_to_job(r) for r in rows]


def get_job(job_id: str, attempts_kept: int) -> Statement[Job | None]:
    """The job with its attempt history (the last ``attempts_kept`` runs)."""

    def parse(rows: list[TupleRow]) -> Job | None:
        return _to_job(rows[0], attempts_kept) if rows else None

    return Statement(q.GET_JOB, (parse_job_id(job_id),), parse)


def get_jobs(ids: Sequence[str]) -> Statement[list[Job]]:
    """The jobs among ``ids`` (canonical ids), without their history, in one query."""
    return Statement(q.GET_JOBS, (_uuid_array(ids),), _jobs)


def cancel_job(job_id: str, now: datetime) -> Statement[CancelResult]:
    """`cancel_jobs`' statement with one id: its `CancelResult` (NOT_FOUND: no such job)."""
    key = parse_job_id(job_id)

    def parse(rows: list[TupleRow]) -> CancelResult:
        return cancel_results(rows).get(key, CancelResult(CancelOutcome.NOT_FOUND))

    return Statement(q.CANCEL_JOBS, cancel_params([key], now), parse)


def cancel_jobs(ids: Sequence[str], now: datetime) -> Statement[dict[str, CancelResult]]:
    """Cancel the jobs among ``ids`` (canonical, from `check_job_ids`)."""
    return Statement(q.CANCEL_JOBS, cancel_params(ids, now), cancel_results)


def cancelled_of(results: dict[str, CancelResult]) -> list[tuple[str, str]]:
    """(id, queue) of the jobs `cancel_jobs` cancelled."""
    return [
        (job_id, r.queue)
        for job_id, r in results.items()
        if r.outcome == CancelOutcome.CANCELLED and r.queue is not None
    ]


def _deleted(rows: list[TupleRow]) -> list[tuple[str, str]]:
    return [(str(r[0]), r[1]) for r in rows]


def delete_jobs(ids: Sequence[str]) -> Statement[list[tuple[str, str]]]:
    """Delete the jobs among ``ids`` that are not running; (id, queue) of each deleted."""
    return Statement(q.DELETE_JOBS, {"ids": _uuid_array(ids)}, _deleted)


def cancelled(job_id: str, result: CancelResult) -> bool:
    """What `cancel_job` answers for ``result``: True if cancelled, False if too late;
    `JobNotFound` if there is no such job."""
    if result.outcome == CancelOutcome.NOT_FOUND:
        raise JobNotFound(f"no job with id {job_id}")
    return result.outcome == CancelOutcome.CANCELLED


def _retried(rows: list[TupleRow]) -> list[tuple[Ready, str]]:
    return [(Ready(str(r[0]), r[1], r[2]), r[3]) for r in rows]


def retry_jobs(ids: Sequence[str], now: datetime) -> Statement[list[tuple[Ready, str]]]:
    """Retry the dead and failed jobs among ``ids``: (what to push, its queue) of each."""
    return Statement(q.RETRY_JOBS, {"ids": _uuid_array(ids), "now": now}, _retried)


def retry_job(job_id: str, now: datetime) -> Statement[list[tuple[Ready, str]]]:
    return retry_jobs([parse_job_id(job_id)], now)


def run_cron_now(
    queue: str, name: str, job_id: str, now: datetime, default_job_timeout: float
) -> Statement[Ready]:
    """One job of cron entry ``name`` now; `CronEntryNotFound` when there is no such entry."""
    if not isinstance(name, str):
        raise entry_not_found(queue, name)

    def parse(rows: list[TupleRow]) -> Ready:
        if not rows:
            raise entry_not_found(queue, name)
        return Ready(str(rows[0][0]), rows[0][1], rows[0][2])

    params = run_cron_params(queue, name, job_id, now, default_job_timeout)
    return Statement(q.RUN_CRON_NOW, params, parse)


def processes(queue: str, now: datetime) -> Statement[list[ProcessInfo]]:
    return Statement(q.PROCESSES, {"queue": queue, "now": now}, to_processes)


def dead_jobs(queue: str, limit: int) -> Statement[list[Job]]:
    return Statement(q.DEAD_JOBS, (queue, check_limit(limit)), _jobs)


def _counts(rows: list[TupleRow]) -> dict[JobStatus, int]:
    counts = dict.fromkeys(JobStatus, 0)
    for status, n in rows:
        counts[JobStatus(status)] = int(n)
    return counts


def _first(rows: list[TupleRow]) -> Any:
    return rows[0][0] if rows else None


def stats_statements(
    queue: str, now: datetime
) -> tuple[Statement[dict[JobStatus, int]], Statement[Any], Statement[Any]]:
    """Counts by status, the oldest due time, and completions in the last minute."""
    return (
        Statement(q.COUNT_BY_STATUS, (queue,), _counts),
        Statement(q.OLDEST_DUE, {"queue": queue, "now": now}, _first),
        Statement(q.COMPLETED_SINCE, (queue, now - timedelta(minutes=1)), _first),
    )


def make_stats(
    queue: str,
    counts: dict[JobStatus, int],
    oldest_due: datetime | None,
    completed: int | None,
    depth: int,
    now: datetime,
    paused: bool = False,
) -> Stats:
    lag = QueueStats(counts, oldest_due).lag(now)
    return Stats(queue, counts, depth, lag, int(completed or 0), paused)


def set_paused(queue: str, paused: bool, now: datetime) -> Statement[None]:
    return Statement(q.SET_PAUSED, {"queue": queue, "paused": paused, "now": now}, _nothing)


def is_paused(queue: str) -> Statement[bool]:
    return Statement(q.IS_PAUSED, {"queue": queue}, lambda rows: bool(rows and rows[0][0]))


def _nothing(rows: list[TupleRow]) -> None:
    return None


def pending(jobs: Sequence[NewJob], seqs: Sequence[int]) -> list[Ready]:
    """What to push after inserting ``jobs`` with ``seqs``: those due now."""
    return [
        Ready(job.id, job.priority, seq)
        for job, seq in zip(jobs, seqs, strict=True)
        if job.status is JobStatus.PENDING
    ]
