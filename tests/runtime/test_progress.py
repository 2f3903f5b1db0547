"""`current_job().set_progress(value)`: coalesced writes, visible within a second, the last
value never lost. In virtual time on the in-memory adapters, except for the handlers that
run in a thread (a mock clock does not wait for threads)."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio

from kyu_trio import (
    JobStatus,
    KyuConnectionError,
    KyuError,
    MemoryStore,
    ProgressError,
    current_job,
)
from kyu_trio._ports import Failure, Lease, Progress
from kyu_trio._runtime._progress import MAX_TRIES, PROGRESS_INTERVAL
from kyu_trio._validation import MAX_PROGRESS_BYTES

from .conftest import Harness


class CountingStore(MemoryStore):
    """Counts the progress writes (statements) and when they happened; can be made to
    fail them, as a lost PostgreSQL would, or to skip rows, as SKIP LOCKED does."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[float, int]] = []  # (trio time, updates in the statement)
        self.down = False
        self.busy: set[str] = set()  # rows "locked by another statement": skipped
        self.at_outcome: dict[str, Any] = {}  # job id -> its progress when its outcome came

    async def complete_jobs(self, leases: Sequence[Lease], *args: Any) -> list[str]:
        self._outcomes([lease.id for lease in leases])
        return await super().complete_jobs(leases, *args)

    async def fail_jobs(self, failures: Sequence[Failure], *args: Any) -> list[str]:
        self._outcomes([f.lease.id for f in failures])
        return await super().fail_jobs(failures, *args)

    def _outcomes(self, ids: list[str]) -> None:
        for job_id in ids:
            progress = self.jobs[job_id].progress
            if progress is not None:
                self.at_outcome[job_id] = progress

    async def set_progress(self, updates: Sequence[Progress], worker_id: str) -> list[str]:
        self.writes.append((trio.current_time(), len(updates)))
        if self.down:
            await trio.lowlevel.checkpoint()
            raise KyuConnectionError("PostgreSQL at db:5432 is unreachable (test)")
        free = [u for u in updates if u.lease.id not in self.busy]
        return await super().set_progress(free, worker_id)


@pytest.fixture
def counting(harness: Harness) -> CountingStore:
    harness.store = CountingStore()
    return harness.store


async def test_10000_reports_in_a_tight_loop_cost_a_handful_of_writes(
    autojump_clock: Any, harness: Harness, counting: CountingStore
) -> None:
    queue = harness.queue()

    @queue.handler("count")
    async def count(n: int) -> None:
        for i in range(n):
            current_job().set_progress({"done": i + 1, "total": n})

    async with queue:
        job_id = await queue.enqueue("count", 10_000)
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert job.status is JobStatus.COMPLETED
    assert job.progress == {"done": 10_000, "total": 10_000}  # the last value, not lost
    assert 1 <= len(counting.writes) <= 2, counting.writes


async def test_a_long_loop_writes_at_most_once_per_interval(
    autojump_clock: Any, harness: Harness, counting: CountingStore
) -> None:
    # 10,000 reports spread over 5 virtual seconds: at most one write per 0.5 s.
    queue = harness.queue()

    @queue.handler("slow")
    async def slow(n: int) -> None:
        for i in range(n):
            current_job().set_progress(i + 1)
            await trio.sleep(0.0005)

    async with queue:
        job_id = await queue.enqueue("slow", 10_000)
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert job.progress == 10_000
    times = [t for t, _ in counting.writes]
    assert len(times) <= 5 / PROGRESS_INTERVAL + 2, times
    # Each write waits an interval after the one before (the stopping pool's final
    # flush aside: it writes what is left at once).
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]
    assert all(gap >= PROGRESS_INTERVAL - 1e-9 for gap in gaps), times


async def test_progress_is_visible_within_a_second_while_the_job_runs(
    autojump_clock: Any, harness: Harness, counting: CountingStore
) -> None:
    queue = harness.queue(workers=4)
    seen: list[Any] = []

    @queue.handler("steps")
    async def steps(payload: None) -> str:
        for step in range(1, 6):
            current_job().set_progress({"step": step})
            await trio.sleep(3)
        return "done"

    async with queue:
        job_id = await queue.enqueue("steps", None)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            start = trio.current_time()
            # Each step is set at start + 3k s; look 1 s later.
            for k in range(5):
                await trio.sleep_until(start + 3 * k + 1.0)
                seen.append((await queue.inspect(job_id)).progress)
            await trio.sleep(5)
            queue.shutdown()
        job = await queue.inspect(job_id)
    assert seen == [{"step": k} for k in range(1, 6)]
    assert (job.status, job.result, job.progress) == (JobStatus.COMPLETED, "done", {"step": 5})
    # One write per step: the first value is written at once, not after an interval.
    assert len(counting.writes) == 5


async def test_the_last_value_is_stored_no_later_than_the_outcome(
    autojump_clock: Any, harness: Harness, counting: CountingStore
) -> None:
    # Set just before returning or failing, 0.1 s after a write: the interval has not
    # passed, yet the value is written before the outcome is (one statement for the
    # completer's batch), so a job that shows its outcome shows its last progress.
    queue = harness.queue()

    @queue.handler("fails")
    async def fails(payload: None) -> None:
        current_job().set_progress("first")
        await trio.sleep(0.1)
        current_job().set_progress("halfway")
        raise RuntimeError("boom")

    @queue.handler("ok")
    async def ok(payload: None) -> None:
        current_job().set_progress("first")
        await trio.sleep(0.1)
        current_job().set_progress("all done")

    @queue.handler("silent")
    async def silent(payload: None) -> None:
        await trio.sleep(0.1)

    async with queue:
        failing = await queue.enqueue("fails", None, max_retries=0)
        completing = await queue.enqueue("ok", None)
        for _ in range(10):
            await queue.enqueue("silent", None)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(0.2)
            writes = len(counting.writes)
            failed, done = await queue.inspect(failing), await queue.inspect(completing)
            await trio.sleep(5)
            queue.shutdown()
    assert counting.at_outcome == {failing: "halfway", completing: "all done"}
    assert (failed.status, failed.progress) == (JobStatus.DEAD, "halfway")
    assert (done.status, done.progress) == (JobStatus.COMPLETED, "all done")
    # The two first values, then the last ones; jobs without progress cost nothing.
    assert writes <= 3 and len(counting.writes) == writes


async def test_a_last_value_skipped_at_the_outcome_lands_after_it(
    autojump_clock: Any, harness: Harness, counting: CountingStore
) -> None:
    # Its row was busy (another statement held it: SKIP LOCKED) when the outcome came:
    # the flusher writes it just after, under the run's lease though it is no longer
    # running.
    queue = harness.queue()

    @queue.handler("ok")
    async def ok(payload: None) -> None:
        current_job().set_progress("first")
        await trio.sleep(0.1)
        counting.busy.add(current_job().id)
        current_job().set_progress("last")

    async with queue:
        job_id = await queue.enqueue("ok", None)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(0.2)
            assert (await queue.inspect(job_id)).progress == "first"
            counting.busy.clear()
            await trio.sleep(PROGRESS_INTERVAL)
            job = await queue.inspect(job_id)
            queue.shutdown()
    assert counting.at_outcome == {job_id: "first"}
    assert (job.status, job.progress) == (JobStatus.COMPLETED, "last")


async def test_many_jobs_share_one_write_per_interval(
    autojump_clock: Any, harness: Harness, counting: CountingStore
) -> None:
    queue = harness.queue(workers=20)

    @queue.handler("part")
    async def part(n: int) -> None:
        for i in range(20):
            current_job().set_progress([n, i])
            await trio.sleep(0.1)

    async with queue:
        ids = [await queue.enqueue("part", n) for n in range(20)]
        await queue.run_once()
        jobs = [await queue.inspect(job_id) for job_id in ids]
    assert [j.progress for j in jobs] == [[n, 19] for n in range(20)]
    # 2 s of work for 20 jobs at once: each statement carries many of them.
    assert len(counting.writes) <= 2 / PROGRESS_INTERVAL + 2, counting.writes
    assert max(n for _, n in counting.writes) == 20


async def test_progress_waits_out_an_outage_and_skipped_rows_are_retried(
    autojump_clock: Any, harness: Harness, counting: CountingStore
) -> None:
    queue = harness.queue()
    release = trio.Event()

    @queue.handler("job")
    async def job(payload: None) -> None:
        current_job().set_progress("during the outage")
        await release.wait()

    async with queue:
        job_id = await queue.enqueue("job", None, job_timeout=300)
        counting.down = True
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(20)
            assert len(counting.writes) > 3  # tried with backoff...
            assert (await queue.inspect(job_id)).progress is None
            counting.down = False
            counting.busy.add(job_id)  # ...then its row is busy for a few flushes
            await trio.sleep(10)
            writes = len(counting.writes)
            assert (await queue.inspect(job_id)).progress is None
            counting.busy.clear()
            await trio.sleep(3)
            # Given up after MAX_TRIES skipped flushes: a later value is needed.
            assert len(counting.writes) == writes
            assert (await queue.inspect(job_id)).progress is None
            release.set()
            await trio.sleep(1)
            queue.shutdown()
    assert MAX_TRIES * PROGRESS_INTERVAL < 10


async def test_progress_survives_an_outage_that_ends(
    autojump_clock: Any, harness: Harness, counting: CountingStore
) -> None:
    queue = harness.queue()

    @queue.handler("job")
    async def job(payload: None) -> None:
        current_job().set_progress(1)
        await trio.sleep(30)
        current_job().set_progress(2)
        await trio.sleep(30)

    async with queue:
        job_id = await queue.enqueue("job", None, job_timeout=300)
        counting.down = True
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(10)
            counting.down = False
            await trio.sleep(6)  # the backoff is capped at 5 s
            assert (await queue.inspect(job_id)).progress == 1
            await trio.sleep(30)
            assert (await queue.inspect(job_id)).progress == 2
            queue.shutdown()


async def test_bad_values_raise_progress_error_and_misuse_raises_kyu_error(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue()
    errors: list[str] = []

    @queue.handler("bad")
    async def bad(payload: None) -> None:
        job = current_job()
        for value in (math.nan, object(), {"x": "\x00"}, "x" * MAX_PROGRESS_BYTES):
            with pytest.raises(ProgressError) as caught:
                job.set_progress(value)
            errors.append(str(caught.value))
        job.set_progress("x" * (MAX_PROGRESS_BYTES - 2))  # exactly the limit, quotes included
        # The job read back by inspect is the running one; another run's is not.
        (await queue.inspect(job.id)).set_progress("x" * (MAX_PROGRESS_BYTES - 2))
        with pytest.raises(KyuError, match="not the job running here"):
            attrs.evolve(job, attempt=job.attempt + 1).set_progress(1)

    async with queue:
        job_id = await queue.enqueue("bad", None, max_retries=0)
        await queue.run_once()
        job = await queue.inspect(job_id)
        with pytest.raises(KyuError, match="not the job running here"):
            job.set_progress(1)  # outside any run
    assert job.status is JobStatus.COMPLETED, job.error_message
    assert len(job.progress) == MAX_PROGRESS_BYTES - 2
    assert "NaN" in errors[0] and "object" in errors[1]
    assert "NUL" in errors[2] and "over the limit of 65536" in errors[3]


async def test_middleware_may_report_progress(autojump_clock: Any, harness: Harness) -> None:
    queue = harness.queue()

    @queue.use
    async def phases(job: Any, call_next: Any) -> None:
        job.set_progress("starting")
        await call_next()

    @queue.handler("noop")
    async def noop(payload: None) -> None:
        await trio.sleep(2)

    async with queue:
        job_id = await queue.enqueue("noop", None)
        await queue.run_once()
        assert (await queue.inspect(job_id)).progress == "starting"


# ---- plain `def` and asyncio handlers: real time (threads) ----------------------------


async def test_a_thread_handler_reports_without_blocking_and_from_many_threads(
    harness: Harness, counting: CountingStore
) -> None:
    queue = harness.queue(workers=8)
    threads: set[int] = set()

    @queue.handler("sync")
    def sync(n: int) -> None:
        threads.add(threading.get_ident())
        for i in range(5_000):
            current_job().set_progress({"job": n, "done": i + 1})

    async with queue:
        ids = [await queue.enqueue("sync", n) for n in range(8)]
        with trio.fail_after(20):
            await queue.run_once()
        jobs = [await queue.inspect(job_id) for job_id in ids]
    assert threading.get_ident() not in threads
    assert [j.progress for j in jobs] == [{"job": n, "done": 5_000} for n in range(8)]
    assert len(counting.writes) <= 8 + 2  # 40,000 reports


async def test_an_asyncio_handler_reports_progress(harness: Harness) -> None:
    pytest.importorskip("trio_asyncio")
    queue = harness.queue()

    async def fetch(n: int) -> None:
        for i in range(n):
            await asyncio.sleep(0)
            current_job().set_progress(i + 1)

    queue.register("fetch", fetch, asyncio=True)
    async with queue:
        job_id = await queue.enqueue("fetch", 1000)
        with trio.fail_after(20):
            await queue.run_once()
        job = await queue.inspect(job_id)
    assert (job.status, job.progress) == (JobStatus.COMPLETED, 1000)


async def test_an_abandoned_thread_reports_nothing_after_its_run(
    harness: Harness, counting: CountingStore
) -> None:
    queue = harness.queue()
    go_on = threading.Event()
    reported = threading.Event()

    @queue.handler("stuck")
    def stuck(payload: None) -> None:
        current_job().set_progress("before the timeout")
        go_on.wait(10)
        current_job().set_progress("after the timeout")  # dropped: the run is over
        reported.set()

    async with queue:
        job_id = await queue.enqueue("stuck", None, max_retries=0, job_timeout=0.3)
        with trio.fail_after(20):
            await queue.run_once()
            writes = len(counting.writes)
            go_on.set()
            await trio.to_thread.run_sync(reported.wait, 10)
            await queue.run_once()  # a new pool: nothing pending reaches it either
        job = await queue.inspect(job_id)
    assert (job.status, job.progress) == (JobStatus.DEAD, "before the timeout")
    assert len(counting.writes) == writes
