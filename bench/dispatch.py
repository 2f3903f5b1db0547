"""Dispatch micro-benchmarks, for comparison with the reference's published figures
(register ~52 ns, execute ~950 ns, execute with middleware ~1.2 us on an i5-6300U).

Execute = handler lookup + middleware chain + the job's timeout on the worker's cancel
scope, no I/O: the same code path a worker runs between claiming a job and recording its
outcome.

    .venv/bin/python -m bench.dispatch
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio

from kyu_trio import Job, JobStatus
from kyu_trio._runtime._handlers import HandlerSpec, Registry

from ._common import machine, write_results

N = 200_000
T0 = datetime(2030, 1, 1, tzinfo=UTC)
JOB = Job(
    id="00000000-0000-0000-0000-000000000001", queue="q", job_type="t", payload="{}",
    status=JobStatus.RUNNING, priority=0, scheduled_at=T0, max_retries=3, retry_count=0,
    error_message=None, locked_by="w", locked_at=T0, completed_at=None, job_timeout=30.0,
    created_at=T0, updated_at=T0, attempt=1,
)  # fmt: skip


async def noop(payload: str) -> None:
    pass


async def passthrough(job: Job, call_next: Callable[[], Awaitable[None]]) -> None:
    await call_next()


def bench_register(n: int) -> float:
    registry = Registry()
    spec = HandlerSpec(noop, "async")
    started = time.perf_counter_ns()
    for _ in range(n):
        registry.handlers["t"] = spec
    return (time.perf_counter_ns() - started) / n


async def execute_loop(registry: Registry, n: int) -> None:
    # What a worker does per job (runtime/_pool.py, WorkerPool._run_jobs): the job runs
    # under the worker's long-lived cancel scope, whose deadline is set to the job's
    # timeout before and reset after.
    with trio.CancelScope() as scope:
        for _ in range(n):
            scope.deadline = trio.current_time() + JOB.job_timeout
            await registry.execute(JOB)
            scope.deadline = math.inf


async def bench_execute(middlewares: int, n: int, tasks: int = 1) -> float:
    registry = Registry()
    registry.handlers["t"] = HandlerSpec(noop, "async")
    registry.middleware.extend([passthrough] * middlewares)
    started = time.perf_counter_ns()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(execute_loop, registry, n // tasks)
    return (time.perf_counter_ns() - started) / n


def main() -> None:
    results: dict[str, Any] = {"machine": machine(), "iterations": N}
    results["register_ns"] = min(bench_register(N) for _ in range(3))
    results["execute_ns"] = min(trio.run(bench_execute, 0, N) for _ in range(3))
    results["execute_2mw_ns"] = min(trio.run(bench_execute, 2, N) for _ in range(3))
    results["execute_parallel_ns"] = min(trio.run(bench_execute, 0, N, 50) for _ in range(3))
    rows = [
        ("register", results["register_ns"], "~52 ns"),
        ("execute (lookup + middleware chain + timeout)", results["execute_ns"], "~950 ns"),
        ("execute with 2 middlewares", results["execute_2mw_ns"], "~1.2 us"),
        ("execute, 50 concurrent tasks", results["execute_parallel_ns"], "~600 ns"),
    ]
    lines = [
        "# Dispatch micro-benchmarks (ns/op, best of 3)",
        "",
        "| benchmark | kyu-trio | kyu (Go, its README) |",
        "|---|---|---|",
        *[f"| {name} | {ns:,.0f} ns | {ref} |" for name, ns, ref in rows],
        "",
        "Allocations per op are not reported: CPython frees them as it goes, so there is no",
        "counter comparable to Go's -benchmem. Reproduce: `.venv/bin/python -m bench.dispatch`",
    ]
    write_results("dispatch", results, "\n".join(lines))


if __name__ == "__main__":
    main()
