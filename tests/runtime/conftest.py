from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kyu_trio import Config, MemoryBroker, MemoryStore, Queue, TrioClock


class Harness:
    """A Queue on in-memory adapters with a trio-derived wall clock."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.broker = MemoryBroker()
        self.clock = TrioClock()

    def queue(self, **overrides: Any) -> Queue:
        values: dict[str, Any] = {
            "workers": 2,
            "metrics_port": 0,
            "scheduler_interval": 1.0,
            "reaper_interval": 10.0,
            "stale_job_timeout": 60.0,
            "heartbeat_interval": 5.0,
            "shutdown_grace": 5.0,
        }
        values.update(overrides)
        return Queue(Config(**values), store=self.store, broker=self.broker, clock=self.clock)

    def seconds(self, when: Any) -> float:
        """Virtual seconds since the epoch of the clock (i.e. trio.current_time())."""
        return float((when - self.clock.now()).total_seconds()) + _now()


def _now() -> float:
    import trio

    return trio.current_time()


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
def make_queue(harness: Harness) -> Callable[..., Queue]:
    return harness.queue
