"""`Snooze`: what a handler raises to run its job again later without spending a retry,
and the checks on a handler's ``max_snoozes`` and ``backoff``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from ._config import MAX_SECONDS
from ._errors import ConfigError, InvalidJobError

#: ``backoff(attempt) -> seconds``: the delay before a job's next retry, where ``attempt``
#: counts the job's failures so far, this one included (1 after its first failure).
Backoff = Callable[[int], float]


class Snooze(Exception):
    """Raised by a handler: put the job back as ``scheduled``, due in ``seconds``, without
    spending a retry (``retry_count`` is unchanged). The run is recorded in the job's
    attempt history with the outcome ``snoozed``.

    A handler registered with ``max_snoozes=N`` may snooze a job N times; a further
    snooze is a failure of that run (retried or dead as any failure).

    Example::

        @queue.handler("poll_export", max_snoozes=20)
        async def poll_export(payload: dict) -> None:
            if not await export_ready(payload["id"]):
                raise Snooze(30)  # ask again in 30 s
    """

    def __init__(self, seconds: float) -> None:
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or not 0 < seconds <= MAX_SECONDS
        ):
            raise InvalidJobError(
                f"Snooze(seconds) needs a number of seconds > 0 and <= {MAX_SECONDS:.0f}, "
                f"got {seconds!r}"
            )
        super().__init__(float(seconds))
        self.seconds = float(seconds)

    def __str__(self) -> str:
        return f"snoozed for {self.seconds}s"


def snooze_of(exc: BaseException) -> Snooze | None:
    """The `Snooze` a handler raised: itself, or the one of an exception group holding
    nothing else (a handler's nursery; with several, the longest: the job is not ready
    until each has its time); None for any other error."""
    if isinstance(exc, Snooze):
        return exc
    if not isinstance(exc, BaseExceptionGroup):
        return None
    snoozes, rest = exc.split(Snooze)
    if snoozes is None or rest is not None:
        return None
    found: list[Snooze] = []

    def walk(group: BaseExceptionGroup[BaseException]) -> None:
        for inner in group.exceptions:
            if isinstance(inner, BaseExceptionGroup):
                walk(inner)
            elif isinstance(inner, Snooze):
                found.append(inner)

    walk(snoozes)
    return max(found, key=lambda s: s.seconds, default=None)


def check_max_snoozes(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"max_snoozes must be None (unlimited) or an int >= 0, got {value!r}")
    return value


def check_backoff(value: object) -> Backoff | None:
    if value is not None and (not callable(value) or inspect.iscoroutinefunction(value)):
        raise ConfigError(
            "backoff must be a plain (not async) callable backoff(attempt) -> seconds, "
            f"got {value!r}"
        )
    return value


def backoff_seconds(value: object) -> float:
    """A backoff's answer as seconds, or `ValueError` saying what is wrong with it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_SECONDS
    ):
        raise ValueError(
            f"returned {value!r}, not a number of seconds >= 0 and <= {MAX_SECONDS:.0f}"
        )
    return float(value)
