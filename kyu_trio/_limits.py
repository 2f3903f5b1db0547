"""Fleet-wide limits per job type (`Queue.register(..., concurrency=, rate_limit=)`):
their validation. The limits themselves are enforced by the store, in the claim (see
`Store.claim_limited`), never by counting in Python."""

from __future__ import annotations

import math

from ._config import MAX_SECONDS, shown
from ._errors import ConfigError
from ._ports import Limit

#: Largest concurrency or rate count accepted: far above any real limit, and small
#: enough that a typo is an error rather than no limit at all.
MAX_LIMIT = 1_000_000


def check_job_limits(concurrency: object, rate_limit: object) -> Limit | None:
    """The `Limit` for ``register``'s arguments, or None without one; `ConfigError` for
    a bad value.

    Example::

        check_job_limits(3, None)            # Limit(concurrency=3)
        check_job_limits(None, (10, 1.0))    # Limit(rate_count=10, rate_per=1.0)
    """
    if concurrency is not None and (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_LIMIT
    ):
        raise ConfigError(
            f"concurrency must be None or an int from 1 to {MAX_LIMIT}, got {shown(concurrency)}"
        )
    rate_count: int | None = None
    rate_per: float | None = None
    if rate_limit is not None:
        count: object = None
        per: object = None
        ok = isinstance(rate_limit, tuple) and len(rate_limit) == 2
        if ok:
            assert isinstance(rate_limit, tuple)
            count, per = rate_limit
            ok = (
                not isinstance(count, bool)
                and isinstance(count, int)
                and 1 <= count <= MAX_LIMIT
                and not isinstance(per, bool)
                and isinstance(per, int | float)
                and math.isfinite(per)
                and 0 < per <= MAX_SECONDS
            )
        if not ok:
            raise ConfigError(
                "rate_limit must be None or (count, per_seconds): at most `count` starts "
                f"(1 to {MAX_LIMIT}) in any window of `per_seconds` (> 0, at most "
                f"{MAX_SECONDS:.0f}), e.g. (10, 1.0); got {shown(rate_limit)}"
            )
        assert isinstance(count, int) and isinstance(per, int | float)
        rate_count, rate_per = count, float(per)
    if concurrency is None and rate_count is None:
        return None
    return Limit(concurrency=concurrency, rate_count=rate_count, rate_per=rate_per)
