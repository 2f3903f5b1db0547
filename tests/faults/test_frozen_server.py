"""A frozen PostgreSQL: every process of the cluster stopped with SIGSTOP. Its host still
accepts and acknowledges TCP, so neither keepalives nor a lost connection tell a client
anything: only a client-side bound ends a wait for its answer.

Shutdown must stay bounded all the same: in a worker told to stop (SIGTERM), ``serve()``
returns (its connections closed) within the grace period plus a bound, and a second
SIGTERM makes it return within a few seconds. Once the server resumes (SIGCONT), no job
is lost: each ends completed, and one that was in flight runs again after the reaper's
rescue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import trio

from kyu_trio._broker._redis import RedisBroker
from kyu_trio._ports import Ready
from kyu_trio._store._postgres import PostgresStore
from tests.faults.harness import FaultEnv, ThrowawayPostgres, Worker, record_jobs

pytestmark = pytest.mark.integration

#: How long past its grace period serve() may take to return with PostgreSQL frozen.
EXIT_BOUND = 10.0
#: How long serve() may take to return after a second SIGTERM with PostgreSQL frozen.
SECOND_SIGNAL_BOUND = 5.0
#: How long the worker process may take to exit after serve() returned: the harness's
#: own teardown (the ``record`` handler's connection pool in tests/faults/worker.py).
HARNESS_TEARDOWN = 10.0


def _children(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                pids.append(int(stat.parent.name))
    return pids


@contextmanager
def frozen(pg: ThrowawayPostgres) -> Iterator[None]:
    """The whole cluster stopped: the postmaster first (so it starts nothing new), then
    every process it started. All resume (SIGCONT) on leaving, whatever happened."""
    postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    stopped: list[int] = []
    try:
        os.kill(postmaster, signal.SIGSTOP)
        stopped.append(postmaster)
        for pid in _children(postmaster):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in reversed(stopped):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def wait_served(worker: Worker, limit: float) -> float | None:
    """Seconds until ``serve()`` returned in the worker (it prints ``serve returned``
    once serve() has closed its connections), or None if it had not after ``limit``."""
    started = time.monotonic()
    while "serve returned" not in worker.output():
        if time.monotonic() - started > limit or worker.proc.poll() is not None:
            return None
        time.sleep(0.05)
    return time.monotonic() - started


def check_exited(worker: Worker, took: float | None, limit: float, after: str) -> None:
    output = f"\n{worker.output()}\n{worker.errors()[-4000:]}"
    assert took is not None, f"still serving {limit:.0f}s after {after}:{output}"
    try:
        code = worker.proc.wait(HARNESS_TEARDOWN)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve() returned but the process did not exit:{output}") from None
    assert code == 0, output
    worker.alive()  # reaped
    print(f"\nserve() returned {took:.1f}s after {after}")


def completed_count(env: FaultEnv) -> int:
    return env.status_counts().get("completed", 0)


def rescued(rows: dict[str, dict[str, object]]) -> set[str]:
    return {i for i, row in rows.items()
            if str(row["error_message"] or "").startswith("worker lost while running")}  # fmt: skip


def check_no_job_lost(env: FaultEnv, ids: list[str], scenario: str) -> None:
    """A fresh worker finishes the run: every job completed; a job ran twice only if the
    frozen worker left it running (its write never reached the server) and the reaper
    rescued it."""
    env.start_worker(workers=4)
    report = env.check(scenario, ids, limit=60)
    env.stop_all()
    assert report.duplicated_ids <= rescued(report.rows), report.duplicated_ids


# ---- the adapter ----------------------------------------------------------------------


async def test_store_calls_stop_waiting_when_cancelled(fault_pg: ThrowawayPostgres) -> None:
    """Against a frozen server a cancelled store call returns at once, and its thread
    ends too (its socket is cut): it gives its limiter token back, and closing the store
    does not hang. Opening is cancellable as well."""
    fault_pg.ensure_running()
    store = PostgresStore(fault_pg.dsn, pool_size=2)
    await store.open()
    try:
        with frozen(fault_pg):
            started = trio.current_time()
            with trio.move_on_after(0.3) as scope:
                await store.get_job(str(uuid.uuid4()))
            assert scope.cancelled_caught
            assert trio.current_time() - started < 1.0
            with trio.fail_after(2):
                while True:
                    if not store._limiter.borrowed_tokens:
                        break
                    await trio.sleep(0.01)

            with trio.move_on_after(0.3) as scope:
                await PostgresStore(fault_pg.dsn).open()
            assert scope.cancelled_caught

            with trio.fail_after(3):
                await store.close()
    finally:
        await store.close()


async def test_cancelled_pop_puts_back_what_it_pops_later(redis_url: str, queue_name: str) -> None:
    """A blocking pop stops waiting when cancelled (shutdown need not wait for it), and
    an id its thread pops afterwards goes back to the set, not lost until the sweep."""
    broker = RedisBroker(redis_url)
    await broker.open()
    try:
        started = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            await broker.pop_wait(queue_name, 5.0)
        assert scope.cancelled_caught
        assert trio.current_time() - started < 1.0
        # The abandoned thread still waits in BZPOPMIN: it takes this id, puts it back,
        # and only then ends (giving its limiter token back).
        await broker.push(queue_name, [Ready(str(uuid.uuid4()), 0, 1)])
        with trio.fail_after(3):
            while True:
                if not broker._limiter.borrowed_tokens:
                    break
                await trio.sleep(0.02)
        assert await broker.size(queue_name) == 1
    finally:
        await broker.close()


# ---- a worker process -------------------------------------------------------------------


def test_sigterm_with_postgres_frozen_stops_within_grace(env: FaultEnv) -> None:
    grace = 1.0
    worker = env.start_worker(workers=4, shutdown_grace=grace)
    ids = env.enqueue(record_jobs(400, "0.05", job_timeout=2.0))
    env.wait_until(lambda: completed_count(env) >= 20, 30, "20 jobs to complete")
    with frozen(env.pg):
        worker.signal(signal.SIGTERM)
        took = wait_served(worker, grace + EXIT_BOUND)
    check_exited(worker, took, grace + EXIT_BOUND, f"SIGTERM (grace {grace}s)")
    check_no_job_lost(env, ids, "frozen-postgres-sigterm")


def test_second_sigterm_with_postgres_frozen_stops_at_once(env: FaultEnv) -> None:
    """A grace period of 60 s, jobs in flight, PostgreSQL frozen: the second SIGTERM
    ends the wait for the grace period and for PostgreSQL alike."""
    worker = env.start_worker(workers=4, shutdown_grace=60.0)
    ids = env.enqueue(record_jobs(40, "0.5", job_timeout=2.0))
    env.wait_until(lambda: len(env.running_of(worker)) == 4, 30, "4 jobs to be running")
    with frozen(env.pg):
        worker.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert worker.alive(), "the first SIGTERM must wait for the grace period"
        worker.signal(signal.SIGTERM)
        took = wait_served(worker, SECOND_SIGNAL_BOUND)
    check_exited(worker, took, SECOND_SIGNAL_BOUND, "the second SIGTERM")
    check_no_job_lost(env, ids, "frozen-postgres-second-sigterm")
