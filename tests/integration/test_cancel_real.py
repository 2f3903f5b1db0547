"""Cancelling running jobs across processes, against real servers (issue 14, must-hold 1):
two worker processes run the jobs; this test process (a third) cancels them through
`Queue`, `Client`, `AsyncioClient` and the CLI. The handlers report to a side table
(tests/integration/cancel_worker.py) when they started, when their cancel scope was
cancelled and that their ``finally`` ran. Also runs examples/cancellation.py."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from kyu_trio import AsyncioClient, Client, Config, JobFailed, JobStatus, Queue
from tests.integration.cancel_worker import TABLE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def side_table(pg_dsn: str) -> Iterator[None]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(TABLE)
    yield


def start_worker(pg_dsn: str, redis_url: str, queue: str, workers: int = 4) -> Any:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.cancel_worker",
         pg_dsn, redis_url, queue, str(workers)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def stop(proc: Any) -> str:
    """SIGTERM, then the worker's stderr once it exited cleanly."""
    proc.send_signal(signal.SIGTERM)
    out, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    assert proc.returncode == 0, err
    assert "serve returned" in out
    return str(err)


def no_errors(err: str) -> None:
    """What a worker logged (WARNING and up): no error, no traceback, no job logged
    failed, requeued or lost (a cancelled run is logged at INFO)."""
    bad = ("ERROR", "CRITICAL", "Traceback", " failed (", " requeued (", "no longer held")
    assert not [line for line in err.splitlines() if any(b in line for b in bad)], err


def events(pg_dsn: str, ids: list[str]) -> dict[str, dict[str, list[tuple[float, int]]]]:
    """job id -> event -> [(wall-clock time, pid)] from the side table."""
    found: dict[str, dict[str, list[tuple[float, int]]]] = {i: {} for i in ids}
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT job_id::text, event, at, pid FROM kyu_test_cancel "
            "WHERE job_id = ANY(%s::uuid[])",
            (ids,),
        ).fetchall()
    for job_id, event, at, pid in rows:
        found[job_id].setdefault(event, []).append((at, pid))
    return found


def rows(pg_dsn: str, ids: list[str]) -> dict[str, tuple[str, float, str | None]]:
    """job id -> (status, updated_at as epoch seconds: when the cancel was sent, result)."""
    with psycopg.connect(pg_dsn) as conn:
        found = conn.execute(
            "SELECT id::text, status, extract(epoch FROM updated_at)::float8, result::text "
            "FROM kyu_jobs WHERE id = ANY(%s::uuid[])",
            (ids,),
        ).fetchall()
    return {i: (status, at, result) for i, status, at, result in found}


async def until(check: Any, limit: float, what: str) -> None:
    """Poll another process's progress (there is no event to wait on)."""
    with trio.move_on_after(limit):
        while not await trio.to_thread.run_sync(check):  # noqa: ASYNC110
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


def figures(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    return f"n={len(ms)} median={statistics.median(ms):.1f} ms max={ms[-1]:.1f} ms"


async def test_cancel_from_a_third_process_stops_running_jobs_in_two_others(
    pg_dsn: str, redis_url: str, queue_name: str, side_table: None
) -> None:
    config = Config(dsn=pg_dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0)
    queue = Queue(config)
    procs = [start_worker(pg_dsn, redis_url, queue_name) for _ in range(2)]
    try:
        async with queue:
            # 8 long jobs for 2 x 4 workers: each process runs 4 of them.
            ids = [await queue.enqueue("hold", 3600, job_timeout=7200) for _ in range(8)]
            await until(
                lambda: all("start" in e for e in events(pg_dsn, ids).values()), 60, "8 starts"
            )
            started = events(pg_dsn, ids)
            assert len({e["start"][0][1] for e in started.values()}) == 2  # both processes

            # Through every front door: Queue (trio), Client (blocking), AsyncioClient
            # (asyncio, in a thread of its own here) and the CLI.
            for job_id in ids[:5]:
                assert await queue.cancel_job(job_id) is True
            with Client(config) as client:
                assert await trio.to_thread.run_sync(client.cancel_job, ids[5]) is True

            async def with_asyncio_client() -> bool:
                async with AsyncioClient(config) as client:
                    return await client.cancel_job(ids[6])

            assert await trio.to_thread.run_sync(asyncio.run, with_asyncio_client()) is True
            env = {k: v for k, v in os.environ.items() if not k.startswith("KYU_")}
            env.update(KYU_DSN=pg_dsn, KYU_REDIS_URL=redis_url, KYU_QUEUE=queue_name)
            cli = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    [sys.executable, "-m", "kyu_trio", "cancel", ids[7]],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            )
            assert (cli.returncode, cli.stdout) == (0, f"cancelled {ids[7]}\n"), cli.stderr

            await until(
                lambda: all("finally" in e for e in events(pg_dsn, ids).values()),
                10,
                "every finally block",
            )
            for job_id in ids:
                with pytest.raises(JobFailed, match="ended cancelled"):
                    await queue.result(job_id)
            # Long enough for a retry, a rescue (stale_job_timeout=2 s) or a re-claim.
            await trio.sleep(3)
            jobs = [await queue.inspect(i) for i in ids]
    finally:
        errs = [await stop(proc) for proc in procs]
    seen = events(pg_dsn, ids)
    latencies = []
    for job in jobs:
        assert (job.status, job.retry_count, job.result) == (JobStatus.CANCELLED, 0, None)
        assert [(a.attempt, a.outcome) for a in job.attempts] == [(1, "cancelled")]
        ran = seen[job.id]
        assert [len(ran[e]) for e in ("start", "cancelled", "finally")] == [1, 1, 1]  # once
        assert ran["start"][0][1] == ran["finally"][0][1]  # in the process that ran it
        sent = rows(pg_dsn, [job.id])[job.id][1]  # the cancel's own timestamp
        latencies.append(ran["cancelled"][0][0] - sent)
    for err in errs:
        no_errors(err)
    print(f"\ncancel -> handler cancelled, across processes: {figures(latencies)}")
    assert max(latencies) < 2.0
    assert statistics.median(latencies) < 0.2


def listen_for_starts(
    pg_dsn: str, ready: trio.Event, send: trio.MemorySendChannel[str], stop: threading.Event
) -> None:
    """In a thread: hand each ``kyu_test_started`` payload (a job id) to trio."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("LISTEN kyu_test_started")
        trio.from_thread.run_sync(ready.set)
        while not stop.is_set():
            for n in conn.notifies(timeout=0.1):
                trio.from_thread.run_sync(send.send_nowait, n.payload)


async def test_cancels_racing_completions_end_one_way_or_the_other(
    pg_dsn: str, redis_url: str, queue_name: str, side_table: None
) -> None:
    n, run_ms = 100, 20
    config = Config(dsn=pg_dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0)
    queue = Queue(config)
    answers: dict[str, bool] = {}
    rng = random.Random(14)
    procs = [start_worker(pg_dsn, redis_url, queue_name) for _ in range(2)]
    try:
        async with queue:
            async with trio.open_nursery() as nursery:
                ready, stop_listening = trio.Event(), threading.Event()
                send, receive = trio.open_memory_channel[str](1000)
                nursery.start_soon(
                    trio.to_thread.run_sync, listen_for_starts, pg_dsn, ready, send, stop_listening
                )
                await ready.wait()
                ids = await queue.enqueue_many([("quick", run_ms)] * n)
                ours = set(ids)

                async def cancel_soon(job_id: str, delay: float) -> None:
                    await trio.sleep(delay)
                    answers[job_id] = await queue.cancel_job(job_id)

                # Each cancel goes out 0-60 ms after its job was heard starting: before,
                # around and after the end of its 20 ms run (and of its completion's
                # write), so that some lose, some win and some are close calls.
                with trio.move_on_after(60):
                    async for job_id in receive:
                        if job_id in ours:
                            nursery.start_soon(cancel_soon, job_id, rng.uniform(0, 0.06))
                            ours.discard(job_id)
                            if not ours:
                                break
                stop_listening.set()
            assert not ours, f"{len(ours)} jobs never started"

            def all_final() -> bool:
                found = rows(pg_dsn, ids)
                return all(s in ("completed", "cancelled") for s, _, _ in found.values())

            await until(all_final, 30, "every job final")
            jobs = {i: await queue.inspect(i) for i in ids}
    finally:
        errs = [await stop(proc) for proc in procs]
    seen = events(pg_dsn, ids)
    sent = {i: at for i, (_, at, _) in rows(pg_dsn, ids).items()}
    latencies, after_return = [], 0
    for job_id, job in jobs.items():
        # Every handler either was cancelled or returned, exactly once.
        ended = sorted(e for e in seen[job_id] if e in ("cancelled", "returned"))
        assert ended in (["cancelled"], ["returned"]), seen[job_id]
        assert all(len(times) == 1 for times in seen[job_id].values())
        if answers[job_id]:
            assert job.status is JobStatus.CANCELLED, job
            assert [a.outcome for a in job.attempts] == ["cancelled"]
            assert job.result is None
            if ended == ["cancelled"]:  # stopped mid-run
                latencies.append(seen[job_id]["cancelled"][0][0] - sent[job_id])
            else:  # won against the run's own completion write, which wrote nothing
                after_return += 1
        else:
            assert job.status is JobStatus.COMPLETED, job
            assert [a.outcome for a in job.attempts] == ["completed"]
            assert (job.result, ended) == ("done", ["returned"])
    won = sum(answers.values())
    print(
        f"\n{n} cancels racing {run_ms} ms runs: {won} cancelled ({len(latencies)} stopped "
        f"mid-run, {figures(latencies) if latencies else '-'}; {after_return} after the "
        f"handler returned, before its completion was written), {n - won} completed first"
    )
    # A real race: both sides won often.
    assert 5 <= won <= n - 5
    assert latencies and max(latencies) < 2.0
    for err in errs:
        no_errors(err)


def test_the_cancellation_example(run_example: Any) -> None:
    """examples/cancellation.py, shown in docs/how-to/cancellation.md."""
    proc = run_example("cancellation.py")
    assert "cancel_job -> True" in proc.stdout
    assert "cleanup ran" in proc.stdout
    assert "status: cancelled, attempts: ['cancelled']" in proc.stdout
    assert "OK: the running job was cancelled" in proc.stdout
