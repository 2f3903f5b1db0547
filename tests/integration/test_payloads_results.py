"""JSON payloads, handler results and attempt history, on real PostgreSQL and Redis."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import trio

from kyu_trio import Config, InvalidJobError, JobStatus, Queue, current_job
from kyu_trio._store._postgres import SCHEMA_VERSION, PostgresStore
from tests.conftest import PG_ADMIN, _dsn_for

pytestmark = pytest.mark.integration


VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    2**53 + 1,
    3.25,
    "",
    "plain text",
    '{"a str": "that looks like JSON"}',
    "ünïcödé 😀 \x00 \n",
    [],
    {},
    [1, [2, [3, [None]]], {"k": "v"}],
    {"order": {"id": 7, "lines": [{"sku": "a", "qty": 2.5}]}, "tags": ["x"], "ok": None},
]


async def _run_until_final(queue: Queue, job_id: str, limit: float = 10.0) -> Any:
    with trio.fail_after(limit):
        while True:
            await queue.run_once()
            job = await queue.inspect(job_id)
            if job.status in (JobStatus.COMPLETED, JobStatus.DEAD):
                return job
            await trio.sleep(0.05)


async def test_every_json_value_reaches_the_handler_and_comes_back_as_result(
    make_config: Callable[..., Config],
) -> None:
    queue = Queue(make_config())
    received: dict[str, Any] = {}

    @queue.handler("echo")
    async def echo(payload: Any) -> Any:
        received[current_job().id] = payload
        return payload

    @queue.handler("echo-sync")
    def echo_sync(payload: Any) -> Any:
        return payload

    async with queue:
        ids = [await queue.enqueue("echo", value) for value in VALUES]
        # Bulk enqueue (COPY) and a sync handler take the same path.
        many = await queue.enqueue_many([("echo-sync", value) for value in VALUES])
        await queue.run_once()
        jobs = [await queue.inspect(job_id) for job_id in ids + many]
    assert [received[i] for i in ids] == VALUES
    assert [type(received[i]) for i in ids] == [type(v) for v in VALUES]
    for job, value in zip(jobs, VALUES + VALUES, strict=True):
        assert job.payload == value
        if isinstance(value, str) and "\x00" in value:
            # A payload may hold NUL, a result not (jsonb): see the next test.
            assert job.status is JobStatus.DEAD
            continue
        assert job.status is JobStatus.COMPLETED, job.error_message
        assert job.result == value
        assert type(job.result) is type(value)


async def test_what_json_cannot_hold_is_refused_and_nothing_is_written(
    make_config: Callable[..., Config], redis_url: str
) -> None:
    async with Queue(make_config()) as queue:
        for bad in (math.nan, math.inf, -math.inf, {"x": [math.nan]}, object(), {1, 2}, b"x"):
            with pytest.raises(InvalidJobError, match="payload must be a JSON value"):
                await queue.enqueue("t", bad)
            with pytest.raises(InvalidJobError, match="payload must be a JSON value"):
                await queue.enqueue_many([("t", "fine"), ("t", bad)])
        assert await queue.list_jobs() == []
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zcard(queue.config.queue_name) == 0
    finally:
        client.close()


async def test_a_result_that_cannot_be_stored_makes_the_job_dead_on_its_first_run(
    make_config: Callable[..., Config],
) -> None:
    queue = Queue(make_config(max_result_bytes=100))
    runs: list[str] = []

    @queue.handler("t")
    async def handler(payload: str) -> Any:
        runs.append(payload)
        return {"set": {1}} if payload == "set" else ("x" * 200 if payload == "big" else "a\x00")

    async with queue:
        ids = {p: await queue.enqueue("t", p, max_retries=3) for p in ("set", "big", "nul")}
        await queue.run_once()
        jobs = {p: await queue.inspect(i) for p, i in ids.items()}
    assert sorted(runs) == ["big", "nul", "set"]  # once each: no retry repeats the work
    for job in jobs.values():
        assert job.status is JobStatus.DEAD
        assert job.result is None
        assert job.error_message.startswith("ResultError: ")
        assert [a.outcome for a in job.attempts] == ["dead"]
    assert "must be a JSON value" in jobs["set"].error_message
    assert "max_result_bytes=100" in jobs["big"].error_message
    assert "NUL" in jobs["nul"].error_message


async def test_two_failures_then_a_completion_leave_three_attempts(
    make_config: Callable[..., Config],
) -> None:
    queue = Queue(make_config(max_backoff=0.05))
    tries: list[int] = []

    @queue.handler("flaky")
    async def flaky_handler(payload: dict[str, int]) -> dict[str, int]:
        tries.append(current_job().attempt)
        if len(tries) <= 2:
            raise ValueError(f"try {len(tries)} of {payload['n']}")
        return {"done": payload["n"]}

    async with queue:
        job_id = await queue.enqueue("flaky", {"n": 5}, max_retries=5)
        job = await _run_until_final(queue, job_id)
    assert job.status is JobStatus.COMPLETED
    assert job.result == {"done": 5}
    assert [a.outcome for a in job.attempts] == ["failed", "failed", "completed"]
    assert [a.attempt for a in job.attempts] == [1, 2, 3]
    for n, attempt in enumerate(job.attempts[:2], start=1):
        assert attempt.error == f"ValueError: try {n} of 5"
        assert attempt.traceback is not None
        assert "flaky_handler" in attempt.traceback
        assert attempt.traceback.rstrip().endswith(f"ValueError: try {n} of 5")
    done = job.attempts[2]
    assert (done.error, done.traceback) == (None, None)
    for attempt in job.attempts:
        assert attempt.worker_id == queue.worker_id
        assert isinstance(attempt.started_at, datetime)
        assert isinstance(attempt.finished_at, datetime)
        assert attempt.started_at <= attempt.finished_at
    assert job.attempts[0].finished_at <= job.attempts[1].started_at
    assert done.finished_at == job.completed_at


async def test_a_timeout_is_recorded_as_timed_out(make_config: Callable[..., Config]) -> None:
    queue = Queue(make_config())

    @queue.handler("slow")
    async def slow(payload: None) -> None:
        await trio.sleep(10)

    async with queue:
        job_id = await queue.enqueue("slow", None, max_retries=0, job_timeout=0.1)
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert [(a.outcome, a.error) for a in job.attempts] == [
        ("timed_out", "TimeoutError: timed out after 0.1s")
    ]
    assert job.payload is None


async def test_a_job_rescued_from_a_lost_worker_shows_lost(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(stale_job_timeout=60.0, max_backoff=0.05)
    queue = Queue(config)

    @queue.handler("t")
    async def t(payload: str) -> str:
        return payload.upper()

    store = PostgresStore(config.dsn, pool_size=2)
    await store.open()
    try:
        async with queue:
            job_id = await queue.enqueue("t", "again", job_timeout=1.0)
            # A worker of another process claimed it 10 minutes ago and was never heard of
            # again: its lease is stale.
            long_ago = datetime.now().astimezone() - timedelta(minutes=10)
            [claimed] = await store.claim_jobs(config.queue_name, [job_id], "gone", long_ago)
            assert claimed.payload == "again"
            job = await _run_until_final(queue, job_id)
    finally:
        await store.close()
    assert job.result == "AGAIN"
    assert [(a.attempt, a.outcome, a.worker_id) for a in job.attempts] == [
        (1, "lost", "gone"),
        (2, "completed", queue.worker_id),
    ]
    assert job.attempts[0].started_at == long_ago
    assert job.attempts[0].error == "worker lost while running (attempt 1)"


def test_the_payloads_and_results_example(run_example: Any) -> None:
    """examples/payloads_and_results.py, shown in docs/how-to/payloads-and-results.md."""
    proc = run_example("payloads_and_results.py")
    out = proc.stdout
    assert "refused: payload must be a JSON value" in out
    # jsonb keeps values, not key order: {'total': 7.0, 'order_id': 7}
    assert re.search(r"^result: \{.*'total': 7\.0", out, re.M)
    assert "'order_id': 7" in out
    assert "attempt 1: failed ConnectionError: upstream timeout for acct-42 (call 1)" in out
    assert "attempt 3: completed" in out
    assert "OK: payloads, results and attempts did what they say" in out


def _database_at_version_2(dsn: str, payloads: list[str]) -> None:
    """The schema as kyu-trio 0.x with migrations 1 and 2 left it, with these payloads."""
    sql = Path(__file__).resolve().parents[2] / "kyu_trio" / "_store" / "sql"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE kyu_schema_version (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version in (1, 2):
            [path] = sql.glob(f"00{version}_*.sql")
            conn.execute(path.read_text().encode())
            conn.execute("INSERT INTO kyu_schema_version (version) VALUES (%s)", (version,))
        for text in payloads:
            conn.execute(
                "INSERT INTO kyu_jobs (id, queue, job_type, payload, status, scheduled_at, "
                "max_retries, job_timeout, created_at, updated_at) VALUES (gen_random_uuid(), "
                "'q', 't', %s, 'pending', now(), 3, 30, now(), now())",
                (text,),
            )


@pytest.fixture
def empty_db() -> Iterator[str]:
    """A database of this test's own, without any kyu-trio schema."""
    name = f"kyu_v2_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _dsn_for(name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migration_3_turns_old_text_payloads_into_the_same_strings(empty_db: str) -> None:
    """A database at schema version 2 holds free-text payloads; after the upgrade each
    reaches its handler as the same str, even text that looks like JSON."""
    old = ["plain", "", '{"looks": "like json"}', "42", 'ünï\n\t\\ "q" \x01']
    _database_at_version_2(empty_db, old)
    store = PostgresStore(empty_db, pool_size=2)
    await store.open()
    try:
        found, now = await store.schema_version()
        assert (found, now) == (2, SCHEMA_VERSION) and now >= 3
        jobs = await store.list_jobs("q", None, None, 10)
    finally:
        await store.close()
    assert sorted(job.payload for job in jobs) == sorted(old)
    assert all(job.result is None and job.attempts == () for job in jobs)
