"""Unique jobs on real servers (issue 13, point 1): concurrent enqueues from several
processes write one job, a finished job frees its key, keys are per queue, and what
``conn=`` sees of keys held by open transactions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import trio

from kyu_trio import Client, Config, EnqueueRequest, InvalidJobError, JobStatus, Queue

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# One process of the race: THREADS threads, released together at a wall-clock time,
# each enqueue "t" with unique_key="k"; prints the ids it got, as JSON.
RACER = """
import json, sys, threading, time
from kyu_trio import Client, Config
dsn, redis_url, queue, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ids = []
with Client(Config(dsn=dsn, redis_url=redis_url, queue_name=queue, pool_size=5)) as client:
    client.enqueue_many([])  # connects (and migrates) before the start line
    def race():
        time.sleep(max(0.0, start - time.time()))
        ids.append(client.enqueue("t", None, unique_key="k"))
    threads = [threading.Thread(target=race) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(json.dumps(ids))
"""


def _race(dsn: str, redis_url: str, queue: str) -> list[str]:
    start = time.time() + 3.0
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, dsn, redis_url, queue, str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    ids = []
    for racer in racers:
        out, _ = racer.communicate(timeout=60)
        assert racer.returncode == 0
        ids += json.loads(out)
    return ids


async def test_20_enqueues_from_4_processes_make_one_job(
    make_config: Callable[..., Config], pg_dsn: str, redis_url: str, queue_name: str
) -> None:
    async with Queue(make_config()) as queue:  # migrates before the racers start
        ids = await trio.to_thread.run_sync(_race, pg_dsn, redis_url, queue_name)
        assert len(ids) == 20
        assert len(set(ids)) == 1
        [job] = await queue.list_jobs()
        assert job.id == ids[0]

        # Once it has completed, the key is free: the next enqueue is a new job.
        queue.register("t", lambda payload: None)
        assert (await queue.run_once()).completed == 1
        assert (await queue.inspect(ids[0])).status is JobStatus.COMPLETED
        again = await queue.enqueue("t", unique_key="k")
        assert again != ids[0]
        assert await queue.enqueue("t", unique_key="k") == again

    # Another queue may hold its own job with key "k" meanwhile.
    async with Queue(make_config(queue_name=queue_name + "-b")) as other:
        theirs = await other.enqueue("t", unique_key="k")
        assert theirs not in (again, ids[0])
        assert (await other.inspect(theirs)).status is JobStatus.PENDING
    async with Queue(make_config()) as queue:
        assert (await queue.inspect(again)).status is JobStatus.PENDING


async def test_enqueue_many_gives_a_repeated_key_one_job(
    make_config: Callable[..., Config],
) -> None:
    async with Queue(make_config()) as queue:
        held = await queue.enqueue("t", unique_key="a")
        ids = await queue.enqueue_many(
            [
                EnqueueRequest("t", 1, unique_key="a"),
                ("t", 2),
                EnqueueRequest("t", 3, unique_key="b"),
                EnqueueRequest("t", 4, unique_key="b"),
                ("t", 5),
            ]
        )
        assert ids[0] == held
        assert ids[2] == ids[3]
        assert len(set(ids)) == 4
        assert len(await queue.list_jobs()) == 4


def _count(dsn: str, queue: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM kyu_jobs WHERE queue = %s", (queue,)).fetchone()
    assert row is not None
    return int(row[0])


def _enqueue_in_thread(client: Client, key: str) -> tuple[threading.Thread, list[str]]:
    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(client.enqueue("t", unique_key=key)))
    thread.start()
    return thread, got


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_an_open_transaction_holding_a_key_makes_other_enqueues_wait(
    make_config: Callable[..., Config], pg_dsn: str, end: str
) -> None:
    with Client(make_config(pool_size=4)) as client, psycopg.connect(pg_dsn) as conn:
        mine = client.enqueue("t", unique_key="k", conn=conn)
        # The transaction sees its own row: a second enqueue in it returns the same job.
        assert client.enqueue("t", unique_key="k", conn=conn) == mine
        thread, got = _enqueue_in_thread(client, "k")
        time.sleep(0.5)
        assert thread.is_alive() and not got  # blocked on the unique index
        getattr(conn, end)()
        thread.join(10)
        assert not thread.is_alive()
        if end == "commit":
            assert got == [mine]
        else:
            assert got != [mine]
            assert client.inspect(got[0]).status is JobStatus.PENDING


def test_conn_enqueue_sees_committed_holders(
    make_config: Callable[..., Config], pg_dsn: str
) -> None:
    with Client(make_config(pool_size=4)) as client, psycopg.connect(pg_dsn) as conn:
        held = client.enqueue("t", unique_key="k")
        assert client.enqueue("t", unique_key="k", conn=conn) == held
        conn.commit()
        assert _count(pg_dsn, client.config.queue_name) == 1


def test_invalid_keys_are_refused_before_anything_is_written(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    with Client(config) as client:
        for bad in ["", "a\nb", "x" * 201, 42]:
            with pytest.raises(InvalidJobError, match="unique_key"):
                client.enqueue("t", unique_key=bad)  # type: ignore[arg-type]
        assert _count(config.dsn, config.queue_name) == 0


def test_the_cli_takes_a_unique_key(make_config: Callable[..., Config]) -> None:
    config = make_config()
    env = {
        "KYU_DSN": config.dsn,
        "KYU_REDIS_URL": config.redis_url,
        "KYU_QUEUE": config.queue_name,
    }
    run = [sys.executable, "-m", "kyu_trio", "enqueue", "t", "--unique-key", "cli"]
    first = subprocess.run(run, env={**os.environ, **env}, capture_output=True, text=True)
    second = subprocess.run(run, env={**os.environ, **env}, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == second.stdout.strip() != ""


def test_the_asyncio_client_returns_the_holder(make_config: Callable[..., Config]) -> None:
    import asyncio

    from kyu_trio import AsyncioClient

    async def main() -> list[str]:
        async with AsyncioClient(make_config()) as client:
            first = await client.enqueue("t", unique_key="aio")
            many = await client.enqueue_many(
                [EnqueueRequest("t", unique_key="aio"), EnqueueRequest("t", unique_key="x")]
            )
            return [first, *many]

    first, again, other = asyncio.run(main())
    assert again == first != other


def test_the_unique_jobs_example(make_config: Callable[..., Config]) -> None:
    """examples/unique_jobs.py (docs/how-to/unique-jobs.md), against this run's database."""
    config = make_config()
    env = {
        **os.environ,
        "KYU_DSN": config.dsn,
        "KYU_REDIS_URL": config.redis_url,
        "KYU_QUEUE": config.queue_name,
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "unique_jobs.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "rebuilt the report of 2026-01-31",
        "one job per key while it waits; a new one once it has completed",
    ]
