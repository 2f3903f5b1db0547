"""Parsing what the command line gives: durations, times, seconds, and the user's
``module:queue``."""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

import attrs
import click

from .._errors import KyuError
from .._runtime._queue import Queue
from .._validation import EARLIEST_AT, LATEST_AT, MAX_DURATION
from ._app import CliError, CliUsageError, cli_error, one_line, settings

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


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

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number of seconds", param, ctx)
        return number


def duration_option(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def when_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
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
            f"{value[:60]!r} is out of range: use a time from 1970-01-01 to 9999-01-01"
        )
    return when


# ---- loading the user's Queue -----------------------------------------------------------


def load_queue(spec: str) -> Queue:
    """Import ``package.module:attribute`` (``:queue`` when omitted) from the current
    directory or sys.path; it must be a `Queue`."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "queue"
    if (
        not module_name
        or not re.fullmatch(r"[\w.]+", module_name)
        or not re.fullmatch(r"[\w.]+", attr)
    ):
        raise CliUsageError(
            f"invalid module path {spec!r}: expected package.module:attribute "
            "(e.g. app.tasks:queue)"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
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
    detail = one_line(str(exc))
    if isinstance(exc, KyuError):
        return CliError(f"importing {module_name!r}: {detail}")
    return CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {detail}")


def configure(queue: Queue, **extra: Any) -> Queue:
    """Apply the connection options given on the command line (and ``extra``) to a queue
    loaded from the user's module; nothing given, nothing changed."""
    changes = {**settings().overrides(), **{k: v for k, v in extra.items() if v is not None}}
    if changes:
        if queue.connected:
            raise CliError("the queue is already connected: cannot change its settings")
        try:
            queue.config = attrs.evolve(queue.config, **changes)
        except KyuError as exc:
            raise cli_error(exc) from None
    return queue
