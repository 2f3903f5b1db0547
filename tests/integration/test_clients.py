"""`Client` (threads) and `AsyncioClient` (asyncio) against real servers and a real trio
worker process, and `result()` in all three APIs (issue 12, points 1, 2, 3 and 6)."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import trio

from kyu_trio import (
    AsyncioClient,
    Client,
    Config,
    JobFailed,
    JobNotFound,
    JobStatus,
    Queue,
)
from kyu_trio._broker._redis import RedisBroker
from kyu_trio._waiters import waiting_key

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(pool_size=8)


@pytest.fixture
def exec_table(pg_dsn: str) -> Iterator[Callable[[], list[tuple[str, int]]]]:
    """The runs of ``record`` jobs, as the worker wrote them."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kyu_client_exec (job_id uuid NOT NULL, attempt int)"
        )
        conn.execute("TRUNCATE kyu_client_exec")

    def runs() -> list[tuple[str, int]]:
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute("SELECT job_id::text, attempt FROM kyu_client_exec").fetchall()
        return [(r[0], r[1]) for r in rows]

    yield runs


@pytest.fixture
def worker(config: Config) -> Iterator[subprocess.Popen[str]]:
    """A trio worker process serving the test's queue (tests/integration/clients_worker.py)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.clients_worker", config.dsn,
         config.redis_url, config.queue_name],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "serving", proc.stderr
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- 1: a plain threaded program ---------------------------------------------------------


def test_sync_client_gets_the_handlers_return_value(config: Config, worker: object) -> None:
    with Client(config) as client:
        job_id = client.enqueue("add", [1, 2, 3.5])
        assert client.result(job_id, timeout=10) == 6.5
        job = client.inspect(job_id)
        assert (job.status, job.result, job.payload) == (JobStatus.COMPLETED, 6.5, [1, 2, 3.5])
        echoed = client.enqueue_many([("echo", {"a": [1, None, True]}), ("echo", "text")])
        assert [client.result(i, timeout=10) for i in echoed] == [{"a": [1, None, True]}, "text"]


def test_the_sync_example_runs_in_threads_without_trio(config: Config) -> None:
    """examples/sync_enqueue.py: a script that never runs trio enqueues from threads with
    `Client`; the same file's worker, in another process, runs the jobs; each
    `result(id, timeout=10)` returns the handler's return value."""
    env = _example_env(config)
    example = str(EXAMPLES / "sync_enqueue.py")
    worker = subprocess.Popen([sys.executable, example, "worker"], env=env, cwd=ROOT)
    try:
        done = subprocess.run(
            [sys.executable, example], env=env, cwd=ROOT, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    finally:
        worker.terminate()
        assert worker.wait(timeout=15) == 0
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "OK: 20 results from 4 threads" in done.stdout, done.stdout


def _example_env(config: Config) -> dict[str, str]:
    return {**os.environ, "KYU_DSN": config.dsn, "KYU_REDIS_URL": config.redis_url,
            "KYU_QUEUE": config.queue_name, "KYU_METRICS_PORT": "0"}  # fmt: skip


def test_the_fastapi_example_enqueues_and_awaits_a_result(config: Config) -> None:
    """examples/fastapi_app.py: POST /jobs enqueues with AsyncioClient, GET
    /jobs/<id>/result awaits the result the file's own trio worker returned."""
    pytest.importorskip("fastapi")
    example = str(EXAMPLES / "fastapi_app.py")
    env = _example_env(config)
    worker = subprocess.Popen([sys.executable, example, "worker"], env=env, cwd=ROOT)
    try:
        done = subprocess.run(
            [sys.executable, example, "--self-test"], env=env, cwd=ROOT, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        worker.terminate()
        assert worker.wait(timeout=15) == 0
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "GET /jobs/<id>/result -> 200 {'id':" in done.stdout
    assert "'result': 5}" in done.stdout
    assert "bad payload -> 400; unknown job -> 404" in done.stdout


# ---- 3: one Client shared by 16 threads ----------------------------------------------------


def test_a_client_shared_by_16_threads(
    config: Config, worker: object, exec_table: Callable[[], list[tuple[str, int]]]
) -> None:
    per_thread = 25
    with Client(config) as client:

        def produce(t: int) -> list[str]:
            ids = [client.enqueue("record", t * 1000 + i) for i in range(per_thread - 5)]
            ids += client.enqueue_many([("record", t * 1000 + 900 + i) for i in range(5)])
            return ids

        with ThreadPoolExecutor(16) as pool:
            ids = [i for batch in pool.map(produce, range(16)) for i in batch]
        assert len(ids) == len(set(ids)) == 16 * per_thread
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: client.result(i, timeout=30), ids))
        expected = [t * 1000 + i for t in range(16) for i in [*range(20), *range(900, 905)]]
        assert sorted(results) == sorted(expected)
    runs = exec_table()
    assert sorted(job_id for job_id, _ in runs) == sorted(ids)  # every job ran, once


# ---- 2: asyncio, never blocking the loop ---------------------------------------------------


def _asyncio_load(config: Config) -> tuple[float, float, int, int]:
    """1,000 jobs from 50 tasks, every result awaited; returns (max loop lag, max time the
    loop's thread ran between two ticks, results, waiter lookups).

    The lag is wall time: on a loaded 2-core machine the OS may also not run the process
    for a while. The thread's CPU time between two ticks is what the loop itself spent
    running callbacks, ours included: that is the blocking the client must avoid."""

    async def main() -> tuple[float, float, int, int]:
        # The garbage earlier tests of this process left would be collected in one long
        # pause somewhere in the middle, charged to the loop: collect it first.
        gc.collect()
        lag = busy = 0.0
        stop = asyncio.Event()

        async def watch() -> None:
            nonlocal lag, busy
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                before, cpu = loop.time(), time.thread_time()
                await asyncio.sleep(0.005)
                lag = max(lag, loop.time() - before - 0.005)
                busy = max(busy, time.thread_time() - cpu)

        async with AsyncioClient(config) as client:
            watcher = asyncio.create_task(watch())

            async def task(t: int) -> list[Any]:
                ids = [await client.enqueue("add", [t, i]) for i in range(20)]
                return [await client.result(i, timeout=60) for i in ids]

            results = await asyncio.gather(*(task(t) for t in range(50)))
            stop.set()
            await watcher
            assert client._waiting is not None
            lookups = client._waiting.hub.lookups
        flat = [r for batch in results for r in batch]
        assert flat == [t + i for t in range(50) for i in range(20)]
        return lag, busy, len(flat), lookups

    return asyncio.run(main())


def test_asyncio_client_1000_jobs_from_50_tasks(config: Config, worker: object) -> None:
    lag, busy, count, _ = _asyncio_load(config)
    assert count == 1000
    assert busy < 0.05, f"the event loop was blocked for {busy * 1000:.0f} ms"
    # Wall time also counts the OS not running us (PostgreSQL, Redis and the worker share
    # the cores): bounded loosely, so that a stall of the loop itself would still show.
    assert lag < 0.5, f"the event loop ran {lag * 1000:.0f} ms late"


def test_asyncio_client_under_uvloop(config: Config, worker: object) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> Any:
        async with AsyncioClient(config) as client:
            ids = await asyncio.gather(*(client.enqueue("echo", {"n": n}) for n in range(50)))
            return await asyncio.gather(*(client.result(i, timeout=30) for i in ids))

    assert uvloop.run(main()) == [{"n": n} for n in range(50)]


# ---- 6: how results end --------------------------------------------------------------------


def test_result_of_a_dead_job_raises_job_failed_with_the_last_error(
    config: Config, worker: object
) -> None:
    with Client(config) as client:
        job_id = client.enqueue("fail", "x", max_retries=1)
        with pytest.raises(JobFailed) as caught:
            client.result(job_id, timeout=20)
    job = caught.value.job
    assert job.id == job_id and job.status is JobStatus.DEAD
    assert job.error_message == "ValueError: no good: x"
    assert "ended dead: ValueError: no good: x" in str(caught.value)


def test_result_of_a_cancelled_job_raises_job_failed_at_once(config: Config) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    with Client(config) as client:
        job_id = client.enqueue("echo", 1, scheduled_at=later)
        failed: list[BaseException] = []

        def wait() -> None:
            try:
                client.result(job_id, timeout=10)
            except BaseException as exc:
                failed.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)  # waiting, and subscribed
        started = time.monotonic()
        assert client.cancel_job(job_id)
        waiter.join(10)
        # Woken by the cancel's notification, not by the poll (POLL_INTERVAL = 2 s).
        assert time.monotonic() - started < 1.5
    assert len(failed) == 1 and isinstance(failed[0], JobFailed)
    assert failed[0].job.status is JobStatus.CANCELLED


def test_result_times_out_with_the_builtin_timeout_error(config: Config) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    with Client(config) as client:
        job_id = client.enqueue("echo", 1, scheduled_at=later)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.result(job_id, timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 2
        with pytest.raises(JobNotFound):
            client.result("00000000-0000-7000-8000-000000000000", timeout=5)
        with pytest.raises(JobNotFound):
            client.result("not an id", timeout=5)

    async def main() -> None:
        async with AsyncioClient(config) as client:
            with pytest.raises(TimeoutError):
                await client.result(job_id, timeout=0.2)
            with pytest.raises(JobNotFound):
                await client.result("00000000-0000-7000-8000-000000000000")

    asyncio.run(main())


def test_1000_waiters_make_far_fewer_queries_than_waiters(config: Config, worker: object) -> None:
    """Each lookup of the waiting loop is one query for all the jobs it asks about."""

    async def main() -> tuple[list[Any], int]:
        async with AsyncioClient(config) as client:
            ids = []
            for start in range(0, 1000, 100):
                ids += await client.enqueue_many(
                    [("add", [n, 1]) for n in range(start, start + 100)]
                )
            results = await asyncio.gather(*(client.result(i, timeout=60) for i in ids))
            assert client._waiting is not None
            return results, client._waiting.hub.lookups

    results, lookups = asyncio.run(main())
    assert results == [n + 1 for n in range(1000)]
    assert lookups <= 50, f"{lookups} lookups for 1,000 waiters"


def test_sync_waiters_share_lookups(config: Config, worker: object) -> None:
    with Client(config) as client:
        ids = client.enqueue_many([("sleep", 0.5) for _ in range(100)])
        with ThreadPoolExecutor(100) as pool:
            assert list(pool.map(lambda i: client.result(i, timeout=30), ids)) == [None] * 100
        assert client._waiting is not None
        assert client._waiting.hub.lookups <= 20


# ---- Queue.result (trio) -------------------------------------------------------------------


async def test_queue_result_in_trio(config: Config) -> None:
    queue = Queue(config)

    @queue.handler("double")
    async def double(payload: Any) -> Any:
        return payload * 2

    @queue.handler("fail")
    async def fail(payload: Any) -> None:
        raise RuntimeError("boom")

    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        job_id = await queue.enqueue("double", 21)
        bad = await queue.enqueue("fail", None, max_retries=0)
        with trio.fail_after(10):
            assert await queue.result(job_id) == 42
            with pytest.raises(JobFailed) as caught:
                await queue.result(bad)
            assert caught.value.job.error_message == "RuntimeError: boom"
            with pytest.raises(JobNotFound):
                await queue.result("00000000-0000-7000-8000-000000000000")
        queue.shutdown()


# ---- the worker's side: nothing published without waiters -----------------------------------


async def test_workers_ask_redis_about_waiters_at_most_once_a_second(
    config: Config, redis_client: redis.Redis
) -> None:
    broker = RedisBroker(config.redis_url)
    await broker.open()
    try:
        assert not await broker.has_waiters(config.queue_name)
        redis_client.set(waiting_key(config.queue_name), "1", ex=5)
        assert not await broker.has_waiters(config.queue_name)  # the cached answer
        await trio.sleep(1.05)
        assert await broker.has_waiters(config.queue_name)
    finally:
        redis_client.delete(waiting_key(config.queue_name))
        await broker.close()


def test_a_result_arrives_by_notification_not_by_the_poll(config: Config, worker: object) -> None:
    """The job finishes long after the waiter subscribed (past the worker's one-second
    cache of "nobody waits"): its result comes with the worker's notification, well
    before the next fallback poll could find it."""
    with Client(config) as client:
        job_id = client.enqueue("sleep", 1.5)
        assert client.result(job_id, timeout=10) is None
        returned = datetime.now(UTC)
        assert client._waiting is not None
        lookups = client._waiting.hub.lookups
        completed_at = client.inspect(job_id).completed_at
    assert completed_at is not None
    assert (returned - completed_at).total_seconds() < 0.5
    # The first lookup, the one after subscribing, then the notified one; no poll.
    assert lookups <= 3
