"""Commands that look at and fix jobs: `enqueue`, `inspect`, `jobs`, `dead`, `cancel`,
`delete`, `retry`, `stats`, `processes` and `purge`."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import attrs
import click
import trio

from .._config import MAX_SECONDS
from .._errors import require_extra
from .._job import Job, JobStatus
from .._runtime._queue import Queue
from .._score import PRIORITY_MAX, PRIORITY_MIN
from .._stats import Stats
from .._text import indented_block
from .._validation import MAX_DURATION, MAX_LIMIT, MAX_RETRIES_LIMIT
from ._app import (
    CliError,
    CliUsageError,
    cli,
    connection_options,
    one_line,
    settings,
    with_queue,
)
from ._output import (
    attempts_table,
    echo_json,
    format_when,
    holds_nothing,
    job_dict,
    note_empty,
    show_jobs,
    stats_dict,
    stats_text,
    table,
)
from ._parsing import Seconds, duration_option, when_option


@cli.command()
@connection_options
@click.argument("job_type", metavar="TYPE")
@click.argument("payload", required=False)
@click.option(
    "--raw",
    is_flag=True,
    help="send PAYLOAD as a string even if it parses as JSON",
)
@click.option(
    "--priority",
    "-p",
    type=click.IntRange(PRIORITY_MIN, PRIORITY_MAX),
    default=0,
    show_default=True,
    help="-32768..32767, higher runs first",
)
@click.option(
    "--delay",
    type=Seconds(0, MAX_DURATION.total_seconds()),
    metavar="SECONDS",
    help="run no earlier than SECONDS from now",
)
@click.option(
    "--at",
    "at",
    metavar="ISO",
    callback=when_option,
    help="run no earlier than this ISO 8601 time (local time without an offset)",
)
@click.option(
    "--max-retries",
    type=click.IntRange(0, MAX_RETRIES_LIMIT),
    default=3,
    show_default=True,
    help="retries after a failure (N+1 runs in all)",
)
@click.option(
    "--timeout",
    type=Seconds(0, MAX_SECONDS, min_open=True),
    metavar="SECONDS",
    help="time limit of one run, up to a year [default: Config.default_job_timeout]",
)
@click.option(
    "--unique-key",
    metavar="KEY",
    help="while an unfinished job of the queue has KEY, add nothing and print its id",
)
def enqueue(
    job_type: str,
    payload: str | None,
    raw: bool,
    priority: int,
    delay: float | None,
    at: datetime | None,
    max_retries: int,
    timeout: float | None,
    unique_key: str | None,
) -> None:
    """Add a job of TYPE with PAYLOAD ('-' reads it from stdin); print its id.

    PAYLOAD is a JSON value when it parses as JSON (none: null), else the text as typed;
    --raw always sends it as a string ('--raw 42' sends "42", not 42).

    \b
    Example: kyu-trio enqueue send_email '{"to": "a@b.c"}' --priority 5 --delay 60
             kyu-trio enqueue resize --raw photos/cat.png
             kyu-trio enqueue report '{"day": "2026-01-31"}' --unique-key report:2026-01-31
    """
    if delay is not None and at is not None:
        raise CliUsageError("use --delay or --at, not both")
    if payload == "-":
        try:
            payload = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliUsageError(
                f"the payload on stdin is not UTF-8 (byte {exc.start}): encode it as UTF-8 "
                "text, e.g. JSON or base64"
            ) from None
    value = _payload_value(payload, raw)
    when = at
    if delay is not None:
        when = datetime.now(UTC) + timedelta(seconds=delay)
    click.echo(
        with_queue(
            settings().queue_obj(),
            lambda queue: queue.enqueue(
                job_type,
                value,
                priority=priority,
                max_retries=max_retries,
                scheduled_at=when,
                job_timeout=timeout,
                unique_key=unique_key,
            ),
        )
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _payload_value(payload: str | None, raw: bool) -> Any:
    """The value the CLI's PAYLOAD stands for: JSON when it parses as JSON, else the text
    as typed (so that ``enqueue send_email grace@example.com`` needs no quoting);
    ``--raw`` takes it as text always (``--raw 42`` sends the str "42")."""
    if payload is None:
        if raw:
            raise CliUsageError("--raw needs a PAYLOAD (the string to send)")
        return None
    if raw:
        return payload
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except ValueError:
        return payload


json_option = click.option(
    "--json", "as_json", is_flag=True, help="print JSON (datetimes ISO 8601) for scripts"
)


@cli.command()
@connection_options
@click.argument("job_id", metavar="ID")
@json_option
def inspect(job_id: str, as_json: bool) -> None:
    """Show the job with this ID (of any queue).

    \b
    Example: kyu-trio inspect 0b5c... --json
    """
    job = with_queue(settings().queue_obj(), lambda queue: queue.inspect(job_id))
    if as_json:
        echo_json(job_dict(job))
        return
    data = job_dict(job)
    del data["attempts"]
    width = max(len(k) for k in data)
    for key, value in data.items():
        if key in ("payload", "result", "progress"):
            shown = one_line(json.dumps(value, ensure_ascii=False))
        elif isinstance(value, datetime):
            shown = format_when(value)
        else:
            shown = "-" if value is None else value
        click.echo(f"{key.ljust(width)}  {shown}")
    if job.attempts:
        click.echo("")
        click.echo(attempts_table(job.attempts))
        failed = [a for a in job.attempts if a.traceback]
        if failed:
            click.echo("")
            click.echo(f"traceback of attempt {failed[-1].attempt}:")
            click.echo(indented_block(failed[-1].traceback or ""))


@cli.command()
@connection_options
@click.option(
    "--status",
    "-s",
    type=click.Choice([s.value for s in JobStatus]),
    help="only jobs in this state",
)
@click.option("--type", "-t", "job_type", metavar="TYPE", help="only jobs of this type")
@click.option("--limit", "-n", type=click.IntRange(1, MAX_LIMIT), default=50, show_default=True)
@json_option
def jobs(status: str | None, job_type: str | None, limit: int, as_json: bool) -> None:
    """List this queue's jobs, newest first.

    \b
    Example: kyu-trio jobs --status failed --type send_email --limit 20
    """
    filtered = status is not None or job_type is not None
    _list(
        partial(Queue.list_jobs, status=status, job_type=job_type, limit=limit),
        as_json,
        "no jobs",
        filtered,
    )


@cli.command()
@connection_options
@click.option("--limit", "-n", type=click.IntRange(1, MAX_LIMIT), default=50, show_default=True)
@json_option
def dead(limit: int, as_json: bool) -> None:
    """List this queue's dead jobs (no retries left), newest first.

    \b
    Example: kyu-trio dead --limit 10
    """
    _list(partial(Queue.dead_jobs, limit=limit), as_json, "no dead jobs", filtered=True)


def _list(
    fetch: Callable[[Queue], Awaitable[list[Job]]],
    as_json: bool,
    none: str,
    filtered: bool = False,
) -> None:
    """Print the jobs ``fetch`` finds (``none`` when there are none), and a note when the
    queue holds no job at all: then a filter did not hide them."""
    queue = settings().queue_obj()

    async def body(queue: Queue) -> tuple[list[Job], bool]:
        found = await fetch(queue)
        return found, not found and (not filtered or await holds_nothing(queue))

    found, empty = with_queue(queue, body)
    show_jobs(found, as_json, none)
    if empty:
        note_empty(queue)


@cli.command()
@connection_options
@click.argument("job_id", metavar="ID")
def cancel(job_id: str) -> None:
    """Cancel a job that has not finished (pending, scheduled, failed awaiting a retry,
    or running: its run is stopped wherever it runs, and it is not retried).

    \b
    Example: kyu-trio cancel 0b5c...
    """
    _change(
        job_id,
        Queue.cancel_job,
        "only pending, scheduled and failed jobs and running ones can be cancelled",
    )
    click.echo(f"cancelled {job_id}")


@cli.command()
@connection_options
@click.argument("job_id", metavar="ID")
def delete(job_id: str) -> None:
    """Delete a job that is not running (whatever its state), with its attempt history.
    A running job is refused: cancel it first.

    \b
    Example: kyu-trio delete 0b5c...
    """
    _change(
        job_id,
        Queue.delete_job,
        f"cancel it first (kyu-trio cancel {job_id}), then delete it",
    )
    click.echo(f"deleted {job_id}")


@cli.command()
@connection_options
def pause() -> None:
    """Pause the queue, fleet-wide: running jobs finish, no job starts until `kyu-trio
    resume` (enqueues are still accepted; workers started meanwhile stay paused).

    \b
    Example: kyu-trio pause --queue kyu:emails
    """
    queue = settings().queue_obj()
    with_queue(queue, Queue.pause)
    click.echo(f"paused {queue.config.queue_name}")


@cli.command()
@connection_options
def resume() -> None:
    """Resume a paused queue: its jobs start again.

    \b
    Example: kyu-trio resume --queue kyu:emails
    """
    queue = settings().queue_obj()
    with_queue(queue, Queue.resume)
    click.echo(f"resumed {queue.config.queue_name}")


@cli.command()
@connection_options
@click.argument("job_id", metavar="ID", required=False)
@click.option("--all-dead", is_flag=True, help="retry every dead job of this queue")
def retry(job_id: str | None, all_dead: bool) -> None:
    """Give a dead or failed job a fresh start (pending now, retry count reset), or every
    dead job of the queue with --all-dead.

    \b
    Example: kyu-trio retry 0b5c...      kyu-trio retry --all-dead
    """
    if (job_id is None) == (not all_dead):
        raise CliUsageError("give a job ID or --all-dead (one of them)")
    if all_dead:
        queue = settings().queue_obj()

        async def retry_all(queue: Queue) -> tuple[int, bool]:
            n = await queue.retry_dead_jobs()
            return n, not n and await holds_nothing(queue)

        n, empty = with_queue(queue, retry_all)
        click.echo(f"retried {n} dead job{'s' if n != 1 else ''}")
        if empty:
            note_empty(queue)
        return
    assert job_id is not None
    _change(job_id, Queue.retry_job, "only dead and failed jobs can be retried")
    click.echo(f"retried {job_id}")


def _change(job_id: str, change: Callable[[Queue, str], Awaitable[bool]], refused: str) -> None:
    """Apply ``change`` (cancel, retry) to one job; if its state refuses it, say which
    state that is."""

    async def body(queue: Queue) -> Job | None:
        if await change(queue, job_id):
            return None
        return await queue.inspect(job_id)

    job = with_queue(settings().queue_obj(), body)
    if job is not None:
        raise CliError(f"job {job.id} is {job.status.value}: {refused}")


@cli.command()
@connection_options
@click.option("--watch", is_flag=True, help="refresh until Ctrl-C")
@click.option(
    "--interval",
    type=Seconds(0.05, 86400),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="seconds between refreshes with --watch (0.05-86400)",
)
@click.option(
    "--count", type=click.IntRange(min=1), metavar="N", help="with --watch: stop after N refreshes"
)
@json_option
def stats(watch: bool, interval: float, count: int | None, as_json: bool) -> None:
    """Counts by status, queue depth, lag and throughput of the last minute.

    With --watch a live table refreshes every --interval seconds until Ctrl-C (with --json:
    one JSON object per line).

    \b
    Example: kyu-trio stats --watch --interval 1
    """
    queue = settings().queue_obj()
    if not watch:
        snapshot = with_queue(queue, Queue.stats)
        click.echo(json.dumps(stats_dict(snapshot)) if as_json else stats_text(snapshot))
        _note_if_empty(queue, snapshot)
        return
    with suppress(KeyboardInterrupt):  # Ctrl-C is how --watch ends
        with_queue(queue, partial(_watch_stats, interval=interval, count=count, as_json=as_json))


async def _watch_stats(queue: Queue, *, interval: float, count: int | None, as_json: bool) -> None:
    require_extra("rich", extra="cli", feature="kyu-trio stats --watch")
    from rich.console import Console
    from rich.live import Live

    console = Console()
    use_live = console.is_terminal and not as_json
    if not use_live:
        shown = 0
        while count is None or shown < count:
            if shown:
                await trio.sleep(interval)
            snapshot = await queue.stats()
            text = json.dumps(stats_dict(snapshot)) if as_json else stats_text(snapshot)
            click.echo(text if as_json else text + "\n")
            sys.stdout.flush()
            if not shown:
                _note_if_empty(queue, snapshot)
            shown += 1
        return
    snapshot = await queue.stats()
    _note_if_empty(queue, snapshot)
    with Live(
        _stats_table(snapshot, interval), console=console, auto_refresh=False, transient=False
    ) as live:
        shown = 1
        while count is None or shown < count:
            await trio.sleep(interval)
            snapshot = await queue.stats()
            live.update(_stats_table(snapshot, interval), refresh=True)
            shown += 1


@cli.command()
@connection_options
@json_option
def processes(as_json: bool) -> None:
    """List the processes serving this queue now (`kyu-trio worker`, `serve()`), oldest
    first: host, pid, workers, when each started and last recorded itself, and which one
    leads the queue's maintenance.

    Each process records itself every leader_interval (5 s by default) and deletes its
    row when it stops; one that died drops out three intervals after its last record.

    \b
    Example: kyu-trio processes --queue kyu:emails
    """
    queue = settings().queue_obj()
    found = with_queue(queue, Queue.processes)
    if as_json:
        echo_json([attrs.asdict(p) for p in found])
        return
    if not found:
        click.echo(
            f"no process serves queue {queue.config.queue_name} (start one with kyu-trio worker)"
        )
        return
    rows = [
        [
            p.process_id,
            one_line(p.host),
            str(p.pid),
            str(p.workers),
            format_when(p.started_at),
            format_when(p.last_seen),
            "yes" if p.leader else "",
        ]
        for p in found
    ]
    headers = ["process", "host", "pid", "workers", "started", "last seen", "leader"]
    click.echo(table(headers, rows))


def _note_if_empty(queue: Queue, snapshot: Stats) -> None:
    if not any(snapshot.counts.values()) and not snapshot.depth:
        note_empty(queue)


def _stats_table(snapshot: Stats, interval: float) -> Any:
    from rich.table import Table

    tbl = Table(
        title=f"kyu-trio · {snapshot.queue}",
        caption=f"{datetime.now().strftime('%H:%M:%S')}, every {interval:g}s",
    )
    tbl.add_column("status")
    tbl.add_column("jobs", justify="right")
    styles = {
        JobStatus.DEAD: "red",
        JobStatus.FAILED: "yellow",
        JobStatus.RUNNING: "cyan",
        JobStatus.COMPLETED: "green",
    }
    for status in JobStatus:
        tbl.add_row(status.value, str(snapshot.counts.get(status, 0)), style=styles.get(status))
    tbl.add_section()
    tbl.add_row("depth (Redis)", str(snapshot.depth))
    tbl.add_row("lag", f"{snapshot.lag_seconds:.1f}s")
    tbl.add_row("completed/min", str(snapshot.completed_last_minute))
    return tbl


@cli.command()
@connection_options
@click.option(
    "--completed-older-than",
    "older_than",
    metavar="DURATION",
    required=True,
    callback=duration_option,
    help="age of the last update, e.g. 30s, 15m, 12h, 7d",
)
@click.option("--include-dead", is_flag=True, help="delete old dead jobs too")
def purge(older_than: timedelta, include_dead: bool) -> None:
    """Delete this queue's completed and cancelled jobs (and dead ones with --include-dead)
    last updated longer ago than the given age; print how many.

    \b
    Example: kyu-trio purge --completed-older-than 7d
    """
    statuses = [JobStatus.COMPLETED, JobStatus.CANCELLED]
    if include_dead:
        statuses.append(JobStatus.DEAD)
    queue = settings().queue_obj()

    async def body(queue: Queue) -> tuple[int, bool]:
        n = await queue.purge(older_than, statuses)
        return n, not n and await holds_nothing(queue)

    n, empty = with_queue(queue, body)
    kinds = "/".join(s.value for s in statuses)
    click.echo(
        f"deleted {n} {kinds} job{'s' if n != 1 else ''} older than {_format_age(older_than)}"
    )
    if empty:
        note_empty(queue)


def _format_age(age: timedelta) -> str:
    seconds = age.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
