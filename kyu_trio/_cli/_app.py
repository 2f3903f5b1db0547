"""The ``kyu-trio`` group, its errors and settings, and `with_queue`: the one helper every
command uses to connect, call the library and close."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any, TypeVar

import attrs
import click
import trio

from .._config import Config
from .._errors import KyuError
from .._runtime._queue import Queue
from .._version import __version__

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


def one_line(text: str) -> str:
    return " ".join(text.split())


class _Group(click.Group):
    """Turns click's usage errors into the same one-line form as every other error."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
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
    return CliUsageError(f"{one_line(exc.format_message())} (see '{path} --help')")


def crashed(exc: BaseException) -> CliError:
    """The one line for a worker stopped by an unexpected error (a bug, here or in the app)."""
    from .._runtime._outcomes import error_message

    return CliError(
        f"worker crashed: {one_line(error_message(exc))} (its traceback is logged above)"
    )


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async body with trio; a `KyuError` becomes the one-line error."""
    try:
        return trio.run(fn)
    except KyuError as exc:
        raise cli_error(exc) from None


def cli_error(exc: KyuError) -> CliError:
    return CliError(one_line(str(exc)))


def with_queue(queue: Queue, body: Callable[[Queue], Awaitable[T]]) -> T:
    """Connect ``queue``, run ``body(queue)`` and close the queue, all in one `trio.run`;
    a `KyuError` becomes the one-line error. What every command that talks to the
    servers does.

    Example::

        job = with_queue(settings().queue_obj(), lambda q: q.inspect(job_id))
    """

    async def connected() -> T:
        async with queue:
            return await body(queue)

    return run(connected)


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
            raise cli_error(exc) from None

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
    for name, field, env, text in reversed(
        (
            ("--dsn", "dsn", "KYU_DSN", "PostgreSQL connection string"),
            ("--redis-url", "redis_url", "KYU_REDIS_URL", "Redis URL"),
            ("--queue", "queue", "KYU_QUEUE", "queue name"),
        )
    ):
        fn = click.option(
            name,
            metavar="TEXT",
            expose_value=False,
            is_eager=True,
            callback=_store(field),
            help=f"{text} [default: ${env}, else the Config default]",
        )(fn)
    return fn


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


# ---- the group ------------------------------------------------------------------------


@click.group("kyu-trio", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@connection_options
@click.version_option(__version__, prog_name="kyu-trio")
def cli() -> None:
    """kyu-trio: run workers, enqueue, look at and fix jobs, and start dev servers.

    Connection settings come from --dsn/--redis-url/--queue (before or after the
    command), else from KYU_DSN/KYU_REDIS_URL/KYU_QUEUE, else the Config defaults.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``kyu-trio`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="kyu-trio")
