"""The bookkeeping of `result()` waiters (`kyu_trio._waiters`), without servers, and
`Queue.result` on the in-memory adapters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from kyu_trio import (
    Config,
    Job,
    JobFailed,
    JobNotFound,
    JobStatus,
    MemoryBroker,
    MemoryStore,
    Queue,
)
from kyu_trio._waiters import Waiter, WaitHub, parse_finished, result_of

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def job(job_id: str, status: JobStatus, result: Any = None, queue: str = "q") -> Job:
    return Job(
        id=job_id, queue=queue, job_type="t", payload=None, status=status, priority=0,
        scheduled_at=NOW, max_retries=0, retry_count=0, error_message="E: x", locked_by=None,
        locked_at=None, completed_at=None, job_timeout=30.0, created_at=NOW, updated_at=NOW,
        result=result,
    )  # fmt: skip


def test_result_of_final_jobs() -> None:
    assert result_of(job("a", JobStatus.COMPLETED, {"x": 1})) == {"x": 1}
    for status in (JobStatus.DEAD, JobStatus.CANCELLED):
        with pytest.raises(JobFailed) as caught:
            result_of(job("a", status))
        assert caught.value.job.status is status
        assert f"ended {status.value}: E: x" in str(caught.value)


def test_the_hub_batches_lookups_and_wakes_only_final_jobs() -> None:
    hub = WaitHub()
    woken: list[str] = []
    waiters = {i: Waiter(i, wake=lambda i=i: woken.append(i)) for i in ("a", "b", "c", "d")}
    for w in waiters.values():
        hub.add(w)
    hub.add(second := Waiter("a", wake=lambda: woken.append("a2")))
    assert hub.take_unchecked() == ["a", "b", "c", "d"]  # one lookup for all
    assert hub.take_unchecked() == []
    done = hub.settle(["a", "b", "c", "d"], [
        job("a", JobStatus.COMPLETED, 5), job("b", JobStatus.RUNNING),
        job("c", JobStatus.PENDING, queue="other"),
    ])  # fmt: skip
    for w in done:
        w.wake()
    assert sorted(woken) == ["a", "a2", "d"]
    assert waiters["a"].job is not None and second.job is not None
    assert isinstance(waiters["d"].error, JobNotFound)
    assert len(hub) == 2 and hub.queues() == {"q", "other"}
    hub.notified(["b", "zzz"])  # only ids waited for are looked up
    assert hub.take_unchecked() == ["b"]
    hub.recheck("other")
    assert hub.take_unchecked() == ["c"]
    hub.discard(waiters["c"])
    assert hub.queues() == {"q"} and hub.lookups == 3


def test_finished_messages_are_comma_separated_ids() -> None:
    assert parse_finished(b"a,b") == ["a", "b"]
    assert parse_finished("") == []


async def test_queue_result_on_the_memory_adapters() -> None:
    queue = Queue(store=MemoryStore(), broker=MemoryBroker())

    @queue.handler("double")
    async def double(payload: Any) -> Any:
        await trio.sleep(0.2)
        return payload * 2

    async with queue, trio.open_nursery() as nursery:
        job_id = await queue.enqueue("double", 21)
        later = await queue.enqueue("double", 1, scheduled_at=datetime(2100, 1, 1, tzinfo=UTC))

        async def cancel_soon() -> None:
            await trio.sleep(0.1)
            assert await queue.cancel_job(later)

        await nursery.start(queue.serve)
        nursery.start_soon(cancel_soon)
        with trio.fail_after(1.5):  # woken by notifications: the poll would take 2 s
            assert await queue.result(job_id) == 42
            with pytest.raises(JobFailed) as caught:
                await queue.result(later)
        assert caught.value.job.status is JobStatus.CANCELLED
        with pytest.raises(JobNotFound):
            await queue.result("00000000-0000-7000-8000-000000000000")
        queue.shutdown()


class FrozenRedis(MemoryBroker):
    """A broker whose answer about waiters never comes (a frozen Redis)."""

    asked = 0

    async def has_waiters(self, queue: str) -> bool:
        self.asked += 1
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_frozen_redis_holds_up_recording_once_then_not_at_all() -> None:
    broker = FrozenRedis()
    queue = Queue(Config(workers=1, metrics_port=0), store=MemoryStore(), broker=broker)
    queue.register("noop", lambda payload: None)
    async with queue:
        await queue.enqueue_many([("noop", None)] * 5)
        started = trio.current_time()
        summary = await queue.run_once()
        elapsed = trio.current_time() - started
    assert summary.completed == 5
    assert broker.asked == 1  # then announcing is off for a while: waiters poll
    assert elapsed < 0.5 + 0.5
