"""The exceptions kyu-trio raises: one base class, one subclass per thing that went wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._text import one_line

if TYPE_CHECKING:
    from ._job import Job


class KyuError(Exception):
    """Base class of every error kyu-trio raises on purpose.

    Example::

        try:
            await queue.inspect(job_id)
        except kyu_trio.KyuError as exc:
            print(f"kyu-trio said: {exc}")
    """


class ConfigError(KyuError, ValueError):
    """A `Config` field, or a value read from the environment, is invalid."""


class InvalidJobError(KyuError, ValueError):
    """An argument to `enqueue` (job type, payload, priority, ...) is invalid.

    Nothing was written when this is raised."""


class JobNotFound(KyuError, LookupError):
    """No job with this id exists (in any queue)."""


class CronEntryNotFound(KyuError, LookupError):
    """The queue has no periodic job (cron entry) of this name in the database: it is
    recorded once a process serving the queue leads its maintenance with the entry
    registered (`Queue.cron`). ``kyu-trio cron`` lists the recorded entries.

    Example::

        try:
            await queue.run_cron_now("nightly_report")
        except kyu_trio.CronEntryNotFound as exc:
            print(exc)
    """


class JobFailed(KyuError):
    """`result()` has no value to give: the job ended ``dead`` (no retries left) or
    ``cancelled``. ``job`` is the job as it ended: its status, last error and attempts.

    Example::

        try:
            value = client.result(job_id, timeout=30)
        except kyu_trio.JobFailed as exc:
            print(exc.job.status, exc.job.error_message)
    """

    def __init__(self, job: Job) -> None:
        # The error is user text: one line, and short (the whole of it is on ``job``).
        why = f": {one_line(job.error_message[:300])}" if job.error_message else ""
        super().__init__(f"job {job.id} ({job.job_type}) ended {job.status.value}{why}")
        self.job = job


class KyuConnectionError(KyuError, ConnectionError):
    """PostgreSQL or Redis could not be reached, went away mid-call, or answered with an
    error that should pass (`ServerError`). A worker rides these out with backoff.

    The message names the server as ``host:port`` and never contains a password.
    """


class ServerError(KyuConnectionError):
    """PostgreSQL or Redis answered, but with an error that waiting may cure: a read-only
    server (a replica after a failover), out of memory or disk, loading its data,
    shutting down, a deadlock or lock timeout.

    The message names the server and quotes the error's code and first line, e.g.
    ``Redis at 10.0.0.5:6379 answered with an error: READONLY You can't write against a
    read only replica.``
    """


class CommandError(KyuError):
    """PostgreSQL or Redis refused a command for a reason that waiting will not cure:
    missing privileges, a key of the wrong type, a value out of range, a missing table.
    It names the server and quotes the error; fix the setting or data it points at.
    """


class NotConnectedError(KyuError, RuntimeError):
    """The `Queue` was used before `connect()` (or after `close()`)."""


class UnknownJobType(KyuError, KeyError):
    """A worker claimed a job whose type has no registered handler."""

    def __init__(self, job_type: str) -> None:
        super().__init__(job_type)
        self.job_type = job_type

    def __str__(self) -> str:
        return f"no handler registered for {self.job_type!r}"


class SchemaError(KyuError):
    """The database schema is newer than this version of kyu-trio understands, or older
    and cannot be migrated here (a read-only server or a user without the privileges),
    or a connection given as ``conn=`` goes to a database without the kyu-trio schema."""


class TransactionError(KyuError):
    """The connection given as ``conn=`` cannot take an enqueue: it is not a psycopg 3
    connection of the right kind, it is closed, or its transaction has already failed.
    Nothing was written.

    Example::

        try:
            client.enqueue("ship_order", {"order": 42}, conn=conn)
        except kyu_trio.TransactionError:
            conn.rollback()
    """


class MetricsPortError(KyuError):
    """The metrics endpoint cannot listen on ``metrics_host:metrics_port``: the port is
    taken (often by another worker on the same host), needs privileges, or the host is not
    an address of this machine. The message names host and port and the setting to change.
    """


class EnqueueOutcomeUnknown(KyuConnectionError):
    """PostgreSQL went away in the middle of an enqueue, and did not come back in time to
    say whether the jobs were written (kyu-trio retried with the same ids, which can never
    write a job twice). ``job_ids`` are their ids: once the server is back,
    `Queue.inspect` tells whether each exists, so the enqueue can be repeated without
    duplicates.

    Example::

        try:
            await queue.enqueue("send_email", payload)
        except kyu_trio.EnqueueOutcomeUnknown as exc:
            remember_to_check(exc.job_ids)
    """

    def __init__(self, message: str, job_ids: list[str]) -> None:
        super().__init__(message)
        self.job_ids = job_ids


class MissingExtraError(KyuError, ImportError):
    """A feature needs an optional package that is not installed; the message names the
    extra that installs it.

    Example::

        try:
            queue.register("fetch", fetch, asyncio=True)
        except kyu_trio.MissingExtraError as exc:
            print(exc)  # ... pip install 'kyu-trio[asyncio]'
    """


def require_extra(module: str, *, extra: str, feature: str) -> None:
    """Raise `MissingExtraError` unless the top-level ``module`` can be imported (it is only
    looked up, not imported)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a finder may refuse the name outright
        found = False
    if not found:
        raise MissingExtraError(
            f"{feature} needs the {module!r} package, which is not installed: "
            f"pip install 'kyu-trio[{extra}]'"
        )


# ---- progress (issue 14) ----


class ProgressError(KyuError, ValueError):
    """`Job.set_progress` was given a value it cannot store: not a JSON value (dict, list,
    str, int, float, bool or None; no NaN or infinity), over 64 KiB of JSON, or holding
    NUL characters (PostgreSQL's jsonb refuses them). Nothing was recorded.

    Example::

        try:
            current_job().set_progress({"done": done, "total": total})
        except kyu_trio.ProgressError as exc:
            log.warning("progress not recorded: %s", exc)
    """
