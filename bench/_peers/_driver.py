"""Runs one phase of a peer app inside the peer's virtualenv, for bench/peers.py:

    python bench/_peers/_driver.py <app module> setup
    python bench/_peers/_driver.py <app module> enqueue <single> <jobs> <batch>
    python bench/_peers/_driver.py <app module> worker

The app module is imported by name (not run as __main__) so that the job functions it
enqueues carry the import path the peer's workers resolve them by. ``enqueue`` prints one JSON
line: {"single_enqueue_per_s": ..., "bulk_enqueue_per_s": ... or null}.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def enqueue(app: Any, single: int, jobs: int, batch: int) -> dict[str, float | None]:
    """Single enqueue (timed), then fill the served queue with ``jobs`` jobs: in bulk and
    timed where the peer has a bulk API, one by one and not timed where it has none."""
    return _call(app.enqueue, single, jobs, batch)  # type: ignore[no-any-return]


def main() -> None:
    app = importlib.import_module(sys.argv[1])
    phase = sys.argv[2]
    if phase == "setup":
        if hasattr(app, "setup"):
            _call(app.setup)
    elif phase == "enqueue":
        single, jobs, batch = (int(a) for a in sys.argv[3:6])
        started = time.perf_counter()
        figures = enqueue(app, single, jobs, batch)
        figures["enqueue_phase_s"] = time.perf_counter() - started
        print(json.dumps(figures), flush=True)
    elif phase == "worker":
        _call(app.worker)
    else:
        raise SystemExit(f"unknown phase {phase!r}")


if __name__ == "__main__":
    main()
