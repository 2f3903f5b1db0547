"""The exceptions kyu-trio raises: one base class, one subclass per thing that went wrong."""

from __future__ import annotations


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


class KyuConnectionError(KyuError, ConnectionError):
    """PostgreSQL or Redis could not be reached or went away mid-call.

    The message names the server as ``host:port`` and never contains a password.
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
    """The database schema is newer than this version of kyu-trio understands."""
