"""Wall-clock sources. The runtime reads the time of day only through one of these."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

import trio


class Clock(Protocol):
    """Something that tells the current wall time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The host's wall clock. Worker hosts must keep their clocks synchronised (NTP)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class TrioClock:
    """Wall time derived from trio's clock: ``epoch + trio.current_time()``.

    Under `trio.testing.MockClock` this makes due times exact and deterministic.
    """

    def __init__(self, epoch: datetime | None = None) -> None:
        self._epoch = epoch or datetime(2030, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=trio.current_time())
