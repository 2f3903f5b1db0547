"""`kyu-trio dashboard`: the web dashboard, served by Hypercorn on trio."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
from typing import Any, cast

import click
import trio

from .._config import validate_queue_name
from .._errors import KyuError, require_extra
from ._app import CliError, CliUsageError, _store, cli, cli_error, one_line, settings

#: Where the credentials of --auth come from (never the command line: it shows in ps).
USER_VAR = "KYU_DASHBOARD_USER"
PASSWORD_VAR = "KYU_DASHBOARD_PASSWORD"
TOKEN_VAR = "KYU_DASHBOARD_TOKEN"
SECRET_VAR = "KYU_DASHBOARD_SECRET"
PRIMARY_VAR = "KYU_PRIMARY_DSN"

log = logging.getLogger("kyu_trio.dashboard")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _auth(kind: str) -> Any:
    from ..dashboard import BasicAuth, BearerAuth

    if kind == "basic":
        user, password = os.environ.get(USER_VAR), os.environ.get(PASSWORD_VAR)
        if not user or not password:
            raise CliUsageError(
                f"--auth basic reads the credentials from {USER_VAR} and {PASSWORD_VAR}; "
                "set both (never on the command line)"
            )
        return BasicAuth(user, password)
    if kind == "bearer":
        token = os.environ.get(TOKEN_VAR)
        if not token:
            raise CliUsageError(f"--auth bearer reads the token from {TOKEN_VAR}; set it")
        return BearerAuth(token)
    return None


def _queues(given: tuple[str, ...]) -> tuple[list[str], bool]:
    """The queues to show, and whether to add those the database names."""
    try:
        for name in given:
            validate_queue_name(name)
    except KyuError as exc:
        raise cli_error(exc) from None
    if given:
        return list(given), False
    # The global --queue (or KYU_QUEUE), else the Config default, plus discovered ones.
    return [settings().config().queue_name], True


@cli.command()
@click.option(
    "--dsn",
    metavar="TEXT",
    expose_value=False,
    is_eager=True,
    callback=_store("dsn"),
    help="PostgreSQL to read from (may be a replica) [default: $KYU_DSN]",
)
@click.option(
    "--redis-url",
    metavar="TEXT",
    expose_value=False,
    is_eager=True,
    callback=_store("redis_url"),
    help="Redis URL [default: $KYU_REDIS_URL]",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="NAME",
    help="a queue to show (repeat for several) [default: $KYU_QUEUE and the queues the "
    "database names]",
)
@click.option("--read-only", is_flag=True, help="offer no action at all")
@click.option(
    "--auth",
    type=click.Choice(["none", "basic", "bearer"]),
    default="none",
    show_default=True,
    help=f"basic: {USER_VAR}/{PASSWORD_VAR}; bearer: {TOKEN_VAR}",
)
@click.option(
    "--primary-dsn",
    metavar="TEXT",
    envvar=PRIMARY_VAR,
    help=f"where actions go when --dsn is a read replica [env: {PRIMARY_VAR}]",
)
@click.option("--show-payloads", is_flag=True, help="show job payloads (off: personal data)")
@click.option(
    "--statement-timeout",
    type=click.FloatRange(0.01, 600),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="longest query of the dashboard",
)
@click.option(
    "--refresh",
    type=click.FloatRange(0, 3600),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="live update of the overview (0: none)",
)
def dashboard(
    host: str,
    port: int,
    queues: tuple[str, ...],
    read_only: bool,
    auth: str,
    primary_dsn: str | None,
    show_payloads: bool,
    statement_timeout: float,
    refresh: float,
) -> None:
    """Serve the web dashboard: queues, jobs, and actions on them.

    It reads with a small pool of its own (at most 4 connections, read-only
    transactions, a statement timeout) from --dsn, which may be a read replica: then
    actions go to --primary-dsn, or, without one, the dashboard is read-only. Credentials
    of --auth come from the environment. Anti-CSRF tokens are signed with
    $KYU_DASHBOARD_SECRET (a random one per process when unset).

    \b
    Example: KYU_DASHBOARD_USER=ops KYU_DASHBOARD_PASSWORD=... \\
             kyu-trio dashboard --queue kyu:default --auth basic
    """
    require_extra("hypercorn", extra="dashboard", feature="kyu-trio dashboard")
    require_extra("starlette", extra="dashboard", feature="kyu-trio dashboard")
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    from ..dashboard import DashboardConfig, create_app

    config = settings().config()
    names, discover = _queues(queues)
    try:
        credentials = _auth(auth)
    except KyuError as exc:
        raise cli_error(exc) from None
    secret = os.environ.get(SECRET_VAR) or None
    try:
        settings_ = DashboardConfig(
            dsn=config.dsn,
            redis_url=config.redis_url,
            primary_dsn=primary_dsn or None,
            queues=names,
            discover_queues=discover,
            read_only=read_only,
            auth=credentials,
            show_payloads=show_payloads,
            statement_timeout=statement_timeout,
            refresh_interval=refresh,
            csrf_secret=secret,
        )
    except KyuError as exc:
        raise cli_error(exc) from None
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if credentials is None and not _loopback(host):
        click.echo(
            f"WARNING: the dashboard listens on {host}, not a loopback address, WITHOUT "
            "authentication: anyone who can reach it can see and act on jobs. Use --auth "
            "basic or bearer (or --read-only behind a proxy that authenticates).",
            err=True,
        )
    app = create_app(settings_)
    hypercorn = HypercornConfig()
    bind = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    hypercorn.bind = [bind]
    hypercorn.accesslog = None
    # Through logging (configured above), not a handler of Hypercorn's own: one line each.
    hypercorn.errorlog = logging.getLogger("hypercorn.error")
    hypercorn.graceful_timeout = 5.0

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def stop() -> None:
                async for _ in signals:
                    return

            async with trio.open_nursery() as nursery:
                urls: list[str] = await nursery.start(
                    lambda task_status: serve(
                        cast(Any, app), hypercorn, shutdown_trigger=stop, task_status=task_status
                    )
                )
                mode = "read-only" if read_only else "actions on"
                shown = ", ".join(names) + (
                    " and the queues the database names" if discover else ""
                )
                click.echo(
                    f"kyu-trio dashboard on {', '.join(urls)} ({mode}; queues: {shown}); "
                    "Ctrl-C stops it",
                    err=True,
                )

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        # Hypercorn could not bind: the one error worth a line of its own.
        found, _ = group.split(OSError)
        if found is None:
            raise
        error = found.exceptions[0]
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        raise CliError(f"cannot listen on {bind}: {one_line(str(error))}") from None
