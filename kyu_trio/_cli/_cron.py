"""The `cron` command: the queue's periodic jobs, as the database records them; and
`cron-run`, which enqueues one of them now."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from .._cron import CronState
from .._runtime._queue import Queue
from .._validation import decode_payload
from ._app import cli, connection_options, one_line, settings, with_queue
from ._output import echo_json, table


def _local(when: datetime | None, state: CronState) -> str:
    """``when`` in the entry's own timezone (its ticks are wall times there)."""
    if when is None:
        return "-"
    entry = state.entry()
    zone = entry.zone if entry is not None else UTC
    return when.astimezone(zone).isoformat(timespec="seconds")


def _row(state: CronState, now: datetime) -> dict[str, Any]:
    next_run = state.next_run(now)
    return {
        "name": state.name,
        "schedule": state.schedule,
        "timezone": state.timezone,
        "job_type": state.job_type,
        "payload": decode_payload(state.payload),
        "priority": state.priority,
        "max_retries": state.max_retries,
        "job_timeout": state.job_timeout,
        "missed": state.missed,
        "registered": state.registered,
        "last_tick": state.last_tick.astimezone(UTC),
        "next_run": None if next_run is None else next_run.astimezone(UTC),
    }


@cli.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="print JSON (datetimes ISO 8601, UTC)")
def cron(as_json: bool) -> None:
    """List this queue's periodic jobs (`Queue.cron`): name, schedule, timezone, job
    type, last tick fired and next run, in the entry's timezone.

    An entry the serving processes no longer register shows 'no' under 'registered'
    and has no next run: it never fires (its row stays).

    \b
    Example: kyu-trio cron --queue kyu:reports
    """
    states = with_queue(settings().queue_obj(), Queue.cron_entries)
    now = datetime.now(UTC)
    if as_json:
        echo_json([_row(state, now) for state in states])
        return
    if not states:
        click.echo("no cron entries (register them with queue.cron() in the serving processes)")
        return
    rows = [
        [
            one_line(state.name),
            state.schedule,
            state.timezone,
            one_line(state.job_type),
            _local(state.last_tick, state),
            _local(state.next_run(now), state),
            "yes" if state.registered else "no",
        ]
        for state in states
    ]
    headers = ["name", "schedule", "timezone", "type", "last tick", "next run", "registered"]
    click.echo(table(headers, rows))


@cli.command("cron-run")
@connection_options
@click.argument("name")
def cron_run(name: str) -> None:
    """Enqueue one job of the periodic job NAME now, as the database records it (job
    type, payload, priority, retries, timeout); print its id. The schedule goes on as
    before: the entry's last tick is not touched.

    \b
    Example: kyu-trio cron-run nightly_report --queue kyu:reports
    """
    click.echo(with_queue(settings().queue_obj(), lambda queue: queue.run_cron_now(name)))
