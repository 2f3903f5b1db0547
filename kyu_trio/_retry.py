"""Pure retry policy: when a failed job is due again, and whether it has a retry left."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import attrs


@attrs.frozen
class RetryPolicy:
    """Exponential backoff: 1 s, 2 s, 4 s, ... capped at ``max_backoff`` seconds.

    ``jitter`` is a fraction: the delay is stretched by a random factor in
    ``[1, 1 + jitter]``, so jitter only ever delays a retry, never brings it forward.
    """

    max_backoff: float = 3600.0
    jitter: float = 0.0
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    def delay(self, retry_count: int) -> float:
        """Seconds to wait after a failure of a job that has had ``retry_count`` retries."""
        # Cap the exponent first so a huge retry_count cannot overflow a float.
        base = min(2.0 ** min(retry_count, 1023), self.max_backoff)
        if self.jitter:
            base *= 1.0 + self.rng.random() * self.jitter
        return base

    def next_due(self, retry_count: int, now: datetime) -> datetime:
        return now + timedelta(seconds=self.delay(retry_count))
