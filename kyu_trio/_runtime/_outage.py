"""Riding out a lost PostgreSQL or Redis: capped, jittered backoff and one log line per outage."""

from __future__ import annotations

import logging
import random

import trio

from .._errors import KyuConnectionError

# Jitter only spreads retries out; one generator serves every loop.
_JITTER = random.Random()


class Outage:
    """Tracks one loop's connection trouble so it logs once when an outage starts and
    once when it ends, not once per failed attempt."""

    def __init__(self, logger: logging.Logger, what: str, cap: float = 10.0) -> None:
        self._logger = logger
        self._what = what
        self._cap = cap
        self._failures = 0

    def failed(self, exc: KyuConnectionError) -> float:
        """Record a failed attempt; return how long to wait before the next one."""
        if self._failures == 0:
            self._logger.error("%s: %s; retrying with backoff", self._what, exc)
        self._failures += 1
        delay: float = min(self._cap, 0.1 * 2.0 ** min(self._failures, 10))
        return delay * (0.5 + _JITTER.random() / 2)

    def recovered(self) -> None:
        if self._failures:
            self._logger.warning(
                "%s: connection is back after %d failed attempts", self._what, self._failures
            )
            self._failures = 0

    async def wait(self, exc: KyuConnectionError) -> None:
        await trio.sleep(self.failed(exc))
