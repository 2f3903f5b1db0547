"""What the commands print: JSON, plain tables, and the note about an empty queue."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import click

from .._job import Attempt, Job, JobStatus
from .._runtime._queue import Queue
from .._stats import Stats
from ._app import one_line


def _json_default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, default=_json_default, indent=None))


def job_dict(job: Job) -> dict[str, Any]:
    data = attrs.asdict(job)
    data["status"] = job.status.value
    return data


def stats_dict(stats: Stats) -> dict[str, Any]:
    return {
        "queue": stats.queue,
        "counts": {status.value: stats.counts.get(status, 0) for status in JobStatus},
        "depth": stats.depth,
        "lag_seconds": round(stats.lag_seconds, 3),
        "completed_last_minute": stats.completed_last_minute,
        "paused": stats.paused,
    }


def format_when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def _cut(text: str | None, width: int) -> str:
    if not text:
        return ""
    text = one_line(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain, pipe-friendly table (no colours, never wrapped)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def jobs_table(jobs: Sequence[Job]) -> str:
    rows = [
        [
            j.id,
            j.job_type,
            j.status.value,
            str(j.priority),
            f"{j.retry_count}/{j.max_retries}",
            format_when(j.created_at),
            _cut(j.error_message, 60),
        ]
        for j in jobs
    ]
    return table(["id", "type", "status", "priority", "retries", "created_at", "error"], rows)


def attempts_table(attempts: Sequence[Attempt]) -> str:
    """A job's runs, oldest first."""
    rows = [
        [
            str(a.attempt),
            a.outcome,
            a.worker_id or "-",
            format_when(a.started_at),
            format_when(a.finished_at),
            _cut(a.error, 60),
        ]
        for a in attempts
    ]
    return table(["attempt", "outcome", "worker", "started_at", "finished_at", "error"], rows)


def stats_text(stats: Stats) -> str:
    rows = [[status.value, str(stats.counts.get(status, 0))] for status in JobStatus]
    state = " (PAUSED: no job starts until `kyu-trio resume`)" if stats.paused else ""
    lines = [f"queue {stats.queue}{state}", table(["status", "jobs"], rows), ""]
    lines.append(f"depth       {stats.depth} job ids waiting in Redis")
    lines.append(f"lag         {stats.lag_seconds:.1f}s (oldest due job not yet started)")
    lines.append(f"throughput  {stats.completed_last_minute} jobs completed in the last minute")
    return "\n".join(lines)


def show_jobs(found: list[Job], as_json: bool, empty: str) -> None:
    if as_json:
        echo_json([job_dict(j) for j in found])
    elif found:
        click.echo(jobs_table(found))
    else:
        click.echo(empty)


async def holds_nothing(queue: Queue) -> bool:
    """True when the queue has no job in any state: most often a mistyped queue name,
    since kyu-trio accepts any valid name and nothing else would say so."""
    return not await queue.list_jobs(limit=1)


def note_empty(queue: Queue) -> None:
    """One line on stderr (stdout keeps the answer, JSON included); the exit status stays
    0, since an empty queue is legitimate."""
    click.echo(
        f"note: queue {queue.config.queue_name!r} holds no jobs at all (check --queue / KYU_QUEUE)",
        err=True,
    )
