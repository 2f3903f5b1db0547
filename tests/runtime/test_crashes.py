"""Issue 10: no exception ends serve() silently, none crashes it for one job's sake, and a
crash never leaves a job behind. In virtual time on the in-memory adapters."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
import trio

from kyu_trio import JobStatus, KyuConnectionError, current_job
from kyu_trio._ports import Ready
from kyu_trio._runtime._pool import CLEANUP_LIMIT, WorkerPool

from .conftest import Harness


def _exit_now(payload: str) -> None:
    sys.exit(3)  # what argparse or a library's sys.exit() does inside a sync handler


async def _raise_base(payload: str) -> None:
    raise {"KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit}[payload]()


async def _raise_group(payload: str) -> None:
    raise BaseExceptionGroup("two", [ValueError("a"), SystemExit(1)])


@pytest.mark.parametrize(
    ("fn", "payload", "message"),
    [
        (_exit_now, "", "SystemExit: 3"),
        (_raise_base, "KeyboardInterrupt", "KeyboardInterrupt"),
        (_raise_base, "GeneratorExit", "GeneratorExit"),
        (_raise_group, "", "BaseExceptionGroup: two (2 sub-exceptions)"),
    ],
)
async def test_base_exceptions_from_handlers_are_that_jobs_failure(
    harness: Harness, fn: Any, payload: str, message: str
) -> None:
    # On 068acfc SystemExit from a sync handler made serve() return normally about half
    # the time, the job left `running`. Run 20 of them: each must fail like any other
    # error, and the worker must go on to run the job enqueued after them.
    # Real time: a sync handler runs in a thread, which a mock clock would not wait for.
    queue = harness.queue(workers=4)
    queue.register("bad", fn)
    ran: list[str] = []
    after = trio.Event()

    @queue.handler("ok")
    async def ok(payload: str) -> None:
        ran.append(payload)
        after.set()

    async with queue:
        bad = [await queue.enqueue("bad", payload, max_retries=0) for _ in range(20)]
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await queue.enqueue("ok", "after", priority=-1)  # after every bad one
            with trio.fail_after(10):
                await after.wait()
            queue.shutdown()
        jobs = [await queue.inspect(i) for i in bad]
    assert {(j.status, j.error_message) for j in jobs} == {(JobStatus.DEAD, message)}
    assert ran == ["after"]


class Broken(RuntimeError):
    pass


async def _broken(*args: Any, **kwargs: Any) -> Any:
    raise Broken("a bug in a runtime task")


@pytest.mark.parametrize(
    ("component", "method"),
    [
        ("store", "claim_jobs"),  # fetcher
        ("store", "complete_jobs"),  # completer
        ("store", "heartbeat"),  # heartbeat
        ("store", "promote_due"),  # scheduler
        ("store", "stale_jobs"),  # reaper
        ("store", "queue_stats"),  # metrics sampler
        ("broker", "pop"),  # fetcher
    ],
)
async def test_unexpected_error_in_any_runtime_task_requeues_and_raises(
    autojump_clock: Any, harness: Harness, caplog: Any, component: str, method: str
) -> None:
    queue = harness.queue(workers=3, heartbeat_interval=0.5, metrics_sample_interval=0.5)
    release = trio.Event()
    started: list[str] = []
    all_started = trio.Event()

    @queue.handler("slow")
    async def slow(payload: str) -> None:
        started.append(payload)
        if len(started) == 3:
            all_started.set()
        await release.wait()

    async with queue:
        ids = [await queue.enqueue("slow", str(i)) for i in range(3)]
        # serve() raises the error itself (here wrapped once, by this test's nursery).
        with pytest.RaisesGroup(pytest.RaisesExc(Broken, match="a bug in a runtime task")):
            async with trio.open_nursery() as nursery:
                if method in ("claim_jobs", "pop"):
                    setattr(getattr(harness, component), method, _broken)
                await nursery.start(queue.serve)
                if method not in ("claim_jobs", "pop"):
                    await all_started.wait()
                    setattr(getattr(harness, component), method, _broken)
                if method == "complete_jobs":
                    release.set()
                await trio.sleep(30)
                pytest.fail("serve() did not fail")
        jobs = [await queue.inspect(i) for i in ids]
    # Nothing stays running: every job serve() held went back to pending, without spending
    # a retry (a job whose completion could not be recorded runs again: at least once).
    assert [j.status for j in jobs] == [JobStatus.PENDING] * 3
    assert all(j.retry_count == 0 for j in jobs)
    assert any("stopped by an unexpected error" in r.getMessage() for r in caplog.records)


async def test_crash_in_the_completer_requeues_the_jobs_it_held(
    autojump_clock: Any, harness: Harness
) -> None:
    queue = harness.queue(workers=2)
    real_complete = harness.store.complete_jobs

    @queue.handler("quick")
    async def quick(payload: str) -> None:
        pass

    async with queue:
        ids = [await queue.enqueue("quick", str(i)) for i in range(2)]
        harness.store.complete_jobs = _broken  # type: ignore[method-assign]
        with pytest.raises(Broken):
            await queue.serve()
        harness.store.complete_jobs = real_complete  # type: ignore[method-assign]
        jobs = [await queue.inspect(i) for i in ids]
    assert [j.status for j in jobs] == [JobStatus.PENDING] * 2
    assert sorted(await harness.broker.pop(queue.config.queue_name, 10)) == sorted(ids)


async def test_pool_stopping_unasked_is_an_error_not_a_clean_return(
    autojump_clock: Any, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = harness.queue()

    async def returns_at_once(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async with queue:
        monkeypatch.setattr(WorkerPool, "run", lambda self, **kw: returns_at_once(**kw))
        with pytest.raises(Exception, match="stopped without being asked"):
            await queue.serve()


async def test_failed_run_is_logged_with_its_traceback_escaped(
    autojump_clock: Any, harness: Harness, caplog: Any
) -> None:
    queue = harness.queue()

    def deep_inside_the_handler(payload: str) -> None:
        raise ValueError(f"bad input\n2030-01-01 INFO kyu_trio: forged {payload}")

    @queue.handler("fails")
    async def fails(payload: str) -> None:
        deep_inside_the_handler(payload)

    caplog.set_level(logging.WARNING, logger="kyu_trio")
    async with queue:
        await queue.enqueue("fails", "secret-payload", max_retries=1)
        await queue.run_once()
    records = [r for r in caplog.records if getattr(r, "kyu_event", None) == "failed"]
    assert len(records) == 1
    text = records[0].getMessage()
    assert records[0].levelno == logging.WARNING
    assert "Traceback (most recent call last)" in text
    assert "deep_inside_the_handler" in text
    # The user's newline cannot start a line of its own that looks like a record.
    assert all(line.startswith("    | ") for line in text.split("\n")[1:])
    assert "bad input\\n2030-01-01" in text
    # log_payloads is off: the payload is not in the message part of the line...
    assert "payload=" not in text.split("\n")[0]


async def test_outcomes_are_kept_through_a_long_outage_and_heartbeats_go_on(
    autojump_clock: Any, harness: Harness
) -> None:
    # On 068acfc the completer gave up after 15 s and stopped heartbeating the job, so a
    # job that had completed was rescued and recorded dead ("worker lost while running").
    queue = harness.queue(heartbeat_interval=1.0)
    outage = True
    real_complete = harness.store.complete_jobs
    real_heartbeat = harness.store.heartbeat
    beats_after: list[float] = []

    async def complete(*args: Any) -> Any:
        if outage:
            raise KyuConnectionError("PostgreSQL at h:5432 is unreachable")
        return await real_complete(*args)

    async def heartbeat(*args: Any) -> Any:
        if outage:
            raise KyuConnectionError("PostgreSQL at h:5432 is unreachable")
        beats_after.append(trio.current_time())
        return await real_heartbeat(*args)

    harness.store.complete_jobs = complete  # type: ignore[method-assign]
    harness.store.heartbeat = heartbeat  # type: ignore[method-assign]

    @queue.handler("t")
    async def t(payload: str) -> None:
        pass

    async with queue:
        job_id = await queue.enqueue("t", "")
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(120)  # far past the old 15 s give-up
            assert (await queue.inspect(job_id)).status is JobStatus.RUNNING
            outage = False
            await trio.sleep(5)
            assert (await queue.inspect(job_id)).status is JobStatus.COMPLETED
            queue.shutdown()


async def test_shutdown_gives_up_on_unwritable_outcomes_after_grace_and_cleanup_limit(
    autojump_clock: Any, harness: Harness, caplog: Any
) -> None:
    queue = harness.queue(shutdown_grace=5.0)
    release = trio.Event()

    async def down(*args: Any) -> Any:
        raise KyuConnectionError("PostgreSQL at h:5432 is unreachable")

    @queue.handler("t")
    async def t(payload: str) -> None:
        await release.wait()

    async with queue:
        await queue.enqueue("t", "")
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(1)
            harness.store.complete_jobs = down  # type: ignore[method-assign]
            release.set()
            await trio.sleep(1)
            t0 = trio.current_time()
            queue.shutdown()
        # Bounded: grace (nothing is running) is skipped, the outcome waits at most the
        # grace plus the cleanup limit.
        assert trio.current_time() - t0 <= 5.0 + CLEANUP_LIMIT + 1
    assert any("could not record 1 outcomes" in r.getMessage() for r in caplog.records)


async def test_second_signal_bounds_a_hung_write(autojump_clock: Any, harness: Harness) -> None:
    # PostgreSQL frozen: a write never answers. The second request to stop (cancel_jobs,
    # what a second SIGTERM does) gives it CLEANUP_LIMIT seconds, no more.
    queue = harness.queue(shutdown_grace=1000.0)
    started = trio.Event()

    async def never(*args: Any) -> Any:
        await trio.sleep_forever()

    @queue.handler("t")
    async def t(payload: str) -> None:
        started.set()
        await trio.sleep_forever()

    async with queue:
        job_id = await queue.enqueue("t", "")
        harness.store.requeue_jobs = never  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await started.wait()
            queue.shutdown()
            await trio.sleep(1)
            t0 = trio.current_time()
            assert queue._serving is not None
            queue._serving.pool.cancel_jobs()  # what the second SIGTERM does
        assert trio.current_time() - t0 <= CLEANUP_LIMIT + 1
        # Never requeued: left to the reaper, as the log says.
        assert (await queue.inspect(job_id)).status is JobStatus.RUNNING


async def test_a_claim_whose_answer_was_lost_runs_its_jobs_once(
    autojump_clock: Any, harness: Harness, caplog: Any
) -> None:
    # On 068acfc the ids went back to Redis as "not claimed" while their rows stayed
    # running: the reaper later spent a retry on jobs that never ran, and with
    # max_retries=0 they ended dead without running once.
    queue = harness.queue(workers=4)
    real_claim = harness.store.claim_jobs
    lost = [True]
    ran: list[str] = []

    async def claim_then_lose_the_answer(*args: Any) -> Any:
        claimed = await real_claim(*args)
        if lost and claimed:
            lost.clear()
            raise KyuConnectionError("PostgreSQL at db:5432 is unreachable or went away")
        return claimed

    harness.store.claim_jobs = claim_then_lose_the_answer  # type: ignore[method-assign]

    @queue.handler("t")
    async def t(payload: str) -> None:
        ran.append(payload)

    async with queue:
        ids = [await queue.enqueue("t", str(i), max_retries=0) for i in range(3)]
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await trio.sleep(5)
            queue.shutdown()
        jobs = [await queue.inspect(i) for i in ids]
    assert not lost
    assert sorted(ran) == ["0", "1", "2"]
    assert [(j.status, j.attempt, j.retry_count) for j in jobs] == [(JobStatus.COMPLETED, 1, 0)] * 3
    assert any("claim's answer was lost" in r.getMessage() for r in caplog.records)
    # Nothing the lost claim took was pushed back to run a second time.
    assert await harness.broker.size(queue.config.queue_name) == 0


async def test_shutdown_is_bounded_when_a_claim_never_answers(
    autojump_clock: Any, harness: Harness
) -> None:
    # PostgreSQL frozen mid-claim: the shielded claim must not hold shutdown up past the
    # grace period and the cleanup limit; its ids go back to Redis.
    queue = harness.queue(shutdown_grace=2.0)
    claiming = trio.Event()

    async def never(*args: Any) -> Any:
        claiming.set()
        await trio.sleep_forever()

    harness.store.claim_jobs = never  # type: ignore[method-assign]
    async with queue:
        job_id = await queue.enqueue("t", "")
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await claiming.wait()
            t0 = trio.current_time()
            queue.shutdown()
        assert trio.current_time() - t0 <= 2.0 + CLEANUP_LIMIT + 1
        assert list(await harness.broker.pop(queue.config.queue_name, 5)) == [job_id]


async def test_a_lost_claim_never_reruns_a_job_this_worker_already_holds(
    autojump_clock: Any, harness: Harness
) -> None:
    # Found by the fault suite (postgres-down-3s): an id pushed twice was claimed by one
    # claim; a later claim of its second copy lost its answer, the read-back found the row
    # running under this worker's id, and the job ran a second time under the same attempt.
    queue = harness.queue(workers=4)
    real_claim = harness.store.claim_jobs
    runs: list[int] = []
    release = trio.Event()
    holding = trio.Event()
    lose_next = [False]

    async def claim(*args: Any) -> Any:
        claimed = await real_claim(*args)
        if lose_next[0]:
            lose_next.clear()
            raise KyuConnectionError("PostgreSQL at db:5432 is unreachable or went away")
        return claimed

    harness.store.claim_jobs = claim  # type: ignore[method-assign]

    @queue.handler("t")
    async def t(payload: str) -> None:
        runs.append(current_job().attempt)
        holding.set()
        await release.wait()

    async with queue:
        job_id = await queue.enqueue("t", "")
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            await holding.wait()
            # A second copy of the running job's id, whose claim loses its answer.
            lose_next[0] = True
            await harness.broker.push(queue.config.queue_name, [Ready(job_id, 0, 10**9)])
            await trio.sleep(5)
            release.set()
            await trio.sleep(1)
            queue.shutdown()
        job = await queue.inspect(job_id)
    assert runs == [1]
    assert job.status is JobStatus.COMPLETED
