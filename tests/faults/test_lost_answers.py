"""Issue 10, items 5 and 7: an outcome whose answer was lost is found out, never guessed,
and a producer's clock running ahead never stalls a job.

Real PostgreSQL and Redis (each test its own database and queue); answers are lost by a
TCP proxy in front of PostgreSQL that cuts the connection right after the server has
committed a statement.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kyu_trio import Config, EnqueueRequest, JobStatus, Queue, SystemClock
from tests.faults.proxy import LossyProxy, lossy_proxy

pytestmark = pytest.mark.integration


def _through(dsn: str, proxy: LossyProxy) -> str:
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    params.update(host="127.0.0.1", port=str(proxy.port))
    return make_conninfo(**params)


def _pg_port(dsn: str) -> int:
    return int(conninfo_to_dict(dsn).get("port") or 5432)


def _rows(dsn: str, queue: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id::text, status, attempt, retry_count FROM kyu_jobs WHERE queue = %s",
            (queue,),
        ).fetchall()


async def test_enqueue_whose_answer_was_lost_writes_one_job(
    pg_dsn: str, make_config: Callable[..., Config], redis_client: Any
) -> None:
    # On 068acfc the caller got an error after the row was committed; its retry wrote a
    # second job. Now enqueue repeats the insert itself, with the same ids.
    with lossy_proxy(_pg_port(pg_dsn)) as proxy:
        config = make_config(dsn=_through(pg_dsn, proxy))
        async with Queue(config) as queue:
            proxy.arm(b"INSERT INTO kyu_jobs")
            single = await queue.enqueue("t", "one")
            # A batch goes in with COPY: lose the answer to its end (CopyDone).
            proxy.arm(b"c\x00\x00\x00\x04")
            batch = await queue.enqueue_many([("t", "a"), ("t", "b"), ("t", "c")])
        assert proxy.answers_lost == 2
    rows = _rows(pg_dsn, config.queue_name)
    assert sorted(r[0] for r in rows) == sorted([single, *batch])
    assert {r[1] for r in rows} == {"pending"}
    # Each id reached Redis once (a sorted set: at most once by construction).
    assert redis_client.zcard(config.queue_name) == 4


async def test_enqueue_gives_up_with_the_ids_when_the_answer_never_comes(
    pg_dsn: str, make_config: Callable[..., Config], monkeypatch: Any
) -> None:
    from kyu_trio import EnqueueOutcomeUnknown
    from kyu_trio._runtime import _enqueue

    monkeypatch.setattr(_enqueue, "ENQUEUE_RETRY_LIMIT", 0.5)
    with lossy_proxy(_pg_port(pg_dsn)) as proxy:
        config = make_config(dsn=_through(pg_dsn, proxy))
        async with Queue(config) as queue:
            proxy.arm(b"INSERT INTO kyu_jobs")
            # Nothing answers any more: the proxy stops accepting connections.
            proxy._listener.close()
            proxy._closed = True
            with pytest.raises(EnqueueOutcomeUnknown) as caught:
                await queue.enqueue("t", "x")
    [job_id] = caught.value.job_ids
    assert job_id in str(caught.value)
    # It was written (the first attempt committed): the ids let the caller find out.
    assert [r[0] for r in _rows(pg_dsn, config.queue_name)] == [job_id]


async def test_claim_whose_answer_was_lost_runs_its_jobs_once_without_spending_a_retry(
    pg_dsn: str, make_config: Callable[..., Config]
) -> None:
    # On 068acfc the ids went back to Redis while the rows stayed running; the reaper
    # later rescued them, so with max_retries=0 the jobs ended dead without ever running.
    ran: list[str] = []
    all_ran = trio.Event()
    producer_config = make_config()
    async with Queue(producer_config) as producer:
        ids = await producer.enqueue_many(
            [EnqueueRequest("t", str(i), max_retries=0) for i in range(5)]
        )
    with lossy_proxy(_pg_port(pg_dsn)) as proxy:
        worker = Queue(
            make_config(
                dsn=_through(pg_dsn, proxy),
                stale_job_timeout=2.0,
                heartbeat_interval=0.2,
                reaper_interval=0.5,
            )
        )

        @worker.handler("t")
        async def t(payload: str) -> None:
            ran.append(payload)
            if len(ran) == 5:
                all_ran.set()

        proxy.arm(b"SET status = 'running'")
        async with worker, trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            with trio.fail_after(20):
                await all_ran.wait()
            await trio.sleep(3)  # past stale_job_timeout: the reaper has had its turn
            worker.shutdown()
        assert proxy.answers_lost == 1
    rows = {r[0]: r[1:] for r in _rows(pg_dsn, producer_config.queue_name)}
    assert sorted(ran) == [str(i) for i in range(5)]
    assert [rows[i] for i in ids] == [("completed", 1, 0)] * 5


class Ahead(SystemClock):
    """A producer whose clock runs ahead of the workers'."""

    def __init__(self, seconds: float) -> None:
        self._ahead = timedelta(seconds=seconds)

    def now(self) -> datetime:
        return super().now() + self._ahead


@pytest.mark.parametrize("ahead", [0.005, 2.0])
async def test_producer_clock_ahead_does_not_stall_jobs(
    make_config: Callable[..., Config], ahead: float
) -> None:
    # On 068acfc, with the producer 5 ms ahead, 0 of 20 fresh jobs ran within 5 s: the
    # claim wanted scheduled_at <= now for pending rows and the popped ids were dropped.
    ran: list[str] = []
    all_ran = trio.Event()
    worker = Queue(make_config(workers=4))

    @worker.handler("t")
    async def t(payload: str) -> None:
        ran.append(payload)
        if len(ran) == 20:
            all_ran.set()

    async with worker, Queue(make_config(), clock=Ahead(ahead)) as producer:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            ids = [await producer.enqueue("t", str(i)) for i in range(20)]
            with trio.fail_after(5):
                await all_ran.wait()
            worker.shutdown()
        statuses = {(await worker.inspect(i)).status for i in ids}
    assert statuses == {JobStatus.COMPLETED}
