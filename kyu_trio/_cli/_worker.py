"""Commands that run jobs (`worker`, `run-once`) and set the database up (`migrate`)."""

from __future__ import annotations

import logging
import sys
import time
from functools import partial

import click
import trio

from .._config import MAX_WORKERS
from .._errors import KyuError, require_extra
from .._job import JobStatus
from .._runtime._queue import Queue
from .._runtime._summary import RunSummary
from .._stats import Stats
from ._app import (
    CliError,
    CliUsageError,
    cli,
    cli_error,
    connection_options,
    crashed,
    one_line,
    settings,
    with_queue,
)
from ._parsing import configure, load_queue


def _processes_option(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    from .._supervisor import cpu_count

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
@click.argument("apps", metavar="APP...", nargs=-1, required=True)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, MAX_WORKERS),
    help="jobs run at once, per queue and process [default: Config.workers]",
)
@click.option(
    "--processes",
    default="1",
    show_default=True,
    metavar="N|auto",
    callback=_processes_option,
    help="worker processes: more than 1 runs a supervisor that starts, restarts "
    "and stops them and serves their metrics on one port; auto: one per core",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="port of /metrics, /healthz and /readyz; 0: none [default: Config.metrics_port]",
)
def worker(
    apps: tuple[str, ...], workers: int | None, processes: int, metrics_port: int | None
) -> None:
    """Run workers, scheduler and reaper for each APP (module.path:queue) until
    SIGINT/SIGTERM.

    Several APPs serve several queues in one process, with one metrics endpoint (that of
    the first APP's Config, or --metrics-port) and one signal watcher.

    With --processes N, N worker processes share the host's cores under one supervisor
    (each imports the APPs afresh): the first signal lets their running jobs finish, a
    second requeues them at once.

    \b
    Example: kyu-trio worker app.tasks:queue --workers 10
             kyu-trio worker app.tasks:queue --processes auto
             kyu-trio worker app.emails:queue app.reports:queue
    """
    from .._runtime._serve_queues import check_queues, serve_queues
    from .._supervisor import Supervisor, WorkerProcess, run_unwrapped

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        child = WorkerProcess.from_env()
    except KyuError as exc:
        raise cli_error(exc) from None
    if child is not None:
        # One of a supervisor's worker processes: an error goes to the supervisor, which
        # prints the one `error:` line (printed here only if the supervisor is gone).
        try:
            child.serve([configure(load_queue(app), **child.overrides) for app in apps])
            return
        except KyuError as exc:
            error: click.ClickException = cli_error(exc)
        except click.ClickException as exc:
            error = exc
        except Exception as exc:  # serve() logged its traceback; one line suffices here
            error = crashed(exc)
        if not child.report_error(error.format_message()):
            raise error
        click.get_current_context().exit(error.exit_code)
    if len(apps) > 1 and settings().queue is not None:
        raise CliUsageError(
            "--queue names one queue, and there are several APPs: set Config.queue_name in "
            "each APP's module instead"
        )
    queues = [
        configure(load_queue(app), workers=workers, metrics_port=metrics_port) for app in apps
    ]
    queue = queues[0]  # its metrics_host/metrics_port and logger serve them all
    try:
        check_queues(queues)
    except KyuError as exc:
        raise cli_error(exc) from None
    if processes == 1:
        try:
            # serve_queues() turns SIGINT/SIGTERM into a graceful stop and returns.
            run_unwrapped(partial(serve_queues, *queues))
        except KyuError as exc:
            raise cli_error(exc) from None
        except Exception as exc:  # serve() logged its traceback; one line suffices here
            raise crashed(exc) from None
        queue.config.logger.info("worker stopped")
        return
    # The children read the command line's settings from their environment, not from
    # their arguments: a password in a --dsn would show in every `ps` listing.
    overrides = {**settings().overrides(), "metrics_port": 0}
    if workers is not None:
        overrides["workers"] = workers
    supervisor = Supervisor(
        command=[sys.executable, "-m", "kyu_trio", "worker", *apps],
        processes=processes,
        overrides=overrides,
        metrics_host=queue.config.metrics_host,
        metrics_port=queue.config.metrics_port,
        logger=queue.config.logger,
    )
    failure = supervisor.run()
    if failure is not None:
        raise CliError(one_line(failure))
    queue.config.logger.info("worker stopped (all %d worker processes)", processes)


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
    queue = configure(load_queue(app), workers=workers)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    started = time.monotonic()
    before, after, summary = with_queue(queue, _run_once)
    click.echo(summary_line(before, after, summary, time.monotonic() - started))


async def _run_once(queue: Queue) -> tuple[Stats, Stats, RunSummary]:
    require_extra("rich", extra="cli", feature="kyu-trio run-once")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    before = await queue.stats()
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("run-once"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no bar (nor blank line) in pipes
    )
    with progress:
        total = before.counts[JobStatus.PENDING]
        task = progress.add_task("", total=total or None)
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            summary: list[RunSummary] = []

            async def drain() -> None:
                try:
                    summary.append(await queue.run_once())
                finally:
                    done.set()

            nursery.start_soon(drain)
            while not done.is_set():
                with trio.move_on_after(0.2):
                    await done.wait()
                now = await queue.stats()
                left = now.counts[JobStatus.PENDING] + now.counts[JobStatus.RUNNING]
                total = max(total, left)
                progress.update(task, completed=total - left, total=total or None)
    after = await queue.stats()
    return before, after, summary[0]


def summary_line(before: Stats, after: Stats, summary: RunSummary, seconds: float) -> str:
    counts = {
        "completed": summary.completed,
        "failed": summary.failed,
        "dead": summary.dead,
        "requeued": summary.requeued,
    }
    total = sum(counts.values())
    changes = []
    for status in JobStatus:
        a, b = before.counts.get(status, 0), after.counts.get(status, 0)
        if a or b:
            changes.append(f"{status.value} {a}→{b}" if a != b else f"{status.value} {a}")
    runs_text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    runs_text = f" ({runs_text})" if total else ""
    return (
        f"run-once: {total} run{'s' if total != 1 else ''}{runs_text} in {seconds:.1f}s; "
        f"{', '.join(changes) or 'no jobs'}"
    )


@cli.command()
@connection_options
def migrate() -> None:
    """Create or upgrade the database schema and print its version.

    \b
    Example: kyu-trio migrate
    """
    # connect() applies the migrations; the store says what it found before.
    before, after = with_queue(settings().queue_obj(), lambda q: q.schema_version())
    if after == before:
        click.echo(f"schema is up to date: version {after}")
    else:
        click.echo(f"schema migrated from version {before} to {after}")
