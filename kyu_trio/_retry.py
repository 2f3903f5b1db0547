"""Pure retry policy: when a failed job is due again, and whether it has a retry left."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import attrs

from ._config import MAX_SECONDS
from ._errors import ConfigError


def _max_backoff(_inst: object, _attr: object, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0 < value <= MAX_SECONDS)
    ):
        raise ConfigError(f"max_backoff must be seconds > 0 and <= {MAX_SECONDS:.0f}")


def _jitter(_inst: object, _attr: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
        raise ConfigError("retry jitter must be a number between 0 and 10")


@attrs.frozen
class RetryPolicy:
    """Exponential backoff: 1 s, 2 s, 4 s, ... capped at ``max_backoff`` seconds.

    ``jitter`` is a fraction: the delay is stretched by a random factor in
    ``[1, 1 + jitter]``, so jitter only ever delays a retry, never brings it forward.
    """

    max_backoff: float = attrs.field(default=3600.0, validator=_max_backoff)
    jitter: float = attrs.field(default=0.0, validator=_jitter)
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    def delay(self, retry_count: int) -> float:
        """Seconds to wait after a failure of a job that has had ``retry_count`` retries."""
        # Clamp the exponent first so no retry_count (huge, or negative from a damaged row)
        # can overflow a float. With max_backoff and jitter bounded the delay stays under
        # 11 * MAX_SECONDS (11 years), so next_due cannot overflow a datetime.
        base = min(2.0 ** min(max(retry_count, 0), 1023), self.max_backoff)
        if self.jitter:
            base *= 1.0 + self.rng.random() * self.jitter
        return base

    def next_due(self, retry_count: int, now: datetime) -> datetime:
        return now + timedelta(seconds=self.delay(retry_count))
