"""Server error replies: PostgreSQL and Redis answer, but with an error.

No redis-py or psycopg exception leaves the adapters: an error that waiting may cure
(Redis OOM or READONLY, PostgreSQL read-only, a deadlock, an admin shutdown...) is a
`ServerError`, which `serve()` rides out like a lost connection (one log line per loop,
backoff, and back to work when the server recovers); anything else is a `CommandError`.
An enqueue whose push is refused after its commit returns the id, logs, and the job runs
once Redis recovers.

Redis faults use a throwaway redis-server (``CONFIG SET maxmemory``, ``REPLICAOF``);
PostgreSQL faults a database of the test's own on the shared server.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import psycopg
import pytest
import redis
import trio

from kyu_trio import Config, JobStatus, KyuConnectionError, Queue, current_job
from kyu_trio._broker._redis import RedisBroker
from kyu_trio._errors import CommandError, ServerError
from kyu_trio._ports import Ready
from kyu_trio._store._postgres import PostgresStore
from tests.conftest import PG_ADMIN, _dsn_for
from tests.faults.harness import FAST, FaultRedis

pytestmark = pytest.mark.integration

#: Loops that log an outage: scheduler, reaper, two fetchers, heartbeat, outcome writes.
OUTAGE_LOOPS = 6


# ---- helpers ------------------------------------------------------------------------


@pytest.fixture
def own_db() -> Iterator[str]:
    """A database of this test's own on the shared server (name), dropped afterwards."""
    name = f"kyu_srverr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def set_read_only(name: str, on: bool) -> None:
    """Sessions opened from now on are read-only, as on a demoted primary."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        value = "on" if on else "off"
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}')


def config(dsn: str, redis_url: str, queue_name: str) -> Config:
    return Config(
        dsn=dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0, workers=2,
        shutdown_grace=2.0, **FAST,
    )  # fmt: skip


@asynccontextmanager
async def serving(cfg: Config) -> AsyncIterator[set[str]]:
    """``serve()`` running in this trio run with an ``echo`` handler; yields the ids of
    the jobs it ran. A crash of serve() fails the test (the nursery raises it)."""
    queue = Queue(cfg)
    ran: set[str] = set()

    @queue.handler("echo")
    async def echo(payload: str) -> None:
        ran.add(current_job().id)

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        yield ran
        queue.shutdown()


async def enqueue(cfg: Config, n: int) -> list[str]:
    async with Queue(cfg) as producer:
        return await producer.enqueue_many([("echo", "")] * n)


async def wait_until(predicate: Callable[[], bool], limit: float, what: str) -> None:
    with trio.move_on_after(limit):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {limit}s waiting for {what}")


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying with backoff" in r.getMessage()]


def check_outage_logged_once(caplog: pytest.LogCaptureFixture, code: str) -> None:
    """At most one line per loop for the whole outage (each loop retried many times), at
    least one naming the error, and one saying the connection is back."""
    lines = outage_lines(caplog)
    assert 1 <= len(lines) <= OUTAGE_LOOPS, "\n".join(lines)
    assert any(code in line for line in lines), "\n".join(lines)
    assert not any("Traceback" in line for line in lines)
    assert any("connection is back" in r.getMessage() for r in caplog.records)


def row_status(dsn: str, job_id: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT status FROM kyu_jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else str(row[0])


def start_replica_of(rds: FaultRedis) -> FaultRedis:
    """Make ``rds`` a replica of a new throwaway Redis (a master demoted in a failover)."""
    master = FaultRedis()
    master.start()
    client = rds.client()
    try:
        client.replicaof("127.0.0.1", master.port)
    finally:
        client.close()
    return master


def promote(rds: FaultRedis) -> None:
    client = rds.client()
    try:
        client.replicaof("NO", "ONE")
    finally:
        client.close()


def set_maxmemory(rds: FaultRedis, limit: int) -> None:
    """``limit`` bytes with noeviction (0: no limit): writes answer OOM past it."""
    client = rds.client()
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", str(limit))
    finally:
        client.close()


# ---- the adapters: which error is which ------------------------------------------------


async def test_redis_error_replies_become_kyu_errors(fault_redis: FaultRedis) -> None:
    broker = RedisBroker(fault_redis.url)
    await broker.open()
    address = f"Redis at 127.0.0.1:{fault_redis.port}"
    entry = [Ready(str(uuid.uuid4()), 0, 1)]
    try:
        set_maxmemory(fault_redis, 1)
        with pytest.raises(ServerError) as info:
            await broker.push("q", entry)
        assert str(info.value).startswith(f"{address} answered with an error: OOM command not")
        assert info.value.__cause__ is None and info.value.__suppress_context__
        assert await broker.pop("q", 10) == {}  # reads and pops still work
        set_maxmemory(fault_redis, 0)

        master = start_replica_of(fault_redis)
        try:
            for call in (broker.push("q", entry), broker.pop("q", 1), broker.claim_epoch("q")):
                with pytest.raises(
                    ServerError,
                    match=f"^{address} answered with an error: "
                    "READONLY You can't write against a read only replica",
                ):
                    await call
        finally:
            promote(fault_redis)
            master.stop()

        # A refusal that waiting will not cure: another application's key of another type.
        client = fault_redis.client()
        client.set("q", "not a sorted set")
        client.close()
        with pytest.raises(CommandError, match=f"^{address} refused a command: WRONGTYPE"):
            await broker.size("q")
        # ...but after an enqueue's commit a push raises only KyuConnectionError, which
        # the enqueue logs and leaves to the reaper's sweep.
        with pytest.raises(KyuConnectionError, match="WRONGTYPE"):
            await trio.to_thread.run_sync(broker.push_blocking, "q", entry)
    finally:
        await broker.close()


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only "
                                               "transaction"), ServerError, "answered"),
        (psycopg.errors.DeadlockDetected("deadlock detected"), ServerError, "answered"),
        (psycopg.errors.LockNotAvailable("could not obtain lock"), ServerError, "answered"),
        (psycopg.errors.AdminShutdown("terminating connection"), ServerError, "answered"),
        (psycopg.errors.DiskFull("could not extend file"), ServerError, "answered"),
        (psycopg.errors.QueryCanceled("canceling statement"), ServerError, "answered"),
        (psycopg.errors.InsufficientPrivilege("permission denied"), CommandError, "refused"),
        (psycopg.errors.UndefinedTable('relation "kyu_jobs" does not exist'), CommandError,
         "refused"),
        (psycopg.errors.NumericValueOutOfRange("bigint out of range"), CommandError, "refused"),
        (psycopg.OperationalError("server closed the connection unexpectedly"),
         KyuConnectionError, "is unreachable or went away"),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
         CommandError, "could not send a command"),
    ],
)  # fmt: skip
def test_postgres_error_classification(error: psycopg.Error, kind: type, text: str) -> None:
    """Which psycopg errors are an outage to ride out and which a refusal to report."""
    store = PostgresStore("postgresql://u:secret@db.example:6543/app")
    mapped = store._error(error)
    assert type(mapped) is kind
    assert text in str(mapped) and "PostgreSQL at db.example:6543" in str(mapped)
    if error.sqlstate:
        assert error.sqlstate in str(mapped)
    assert "secret" not in str(mapped)


async def test_postgres_refusal_is_a_command_error(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        with pytest.raises(CommandError, match=r"refused a command: 22003 bigint out of range"):
            await store.list_jobs("q", None, None, 2**63)
        await store.ping()  # the connection that saw the error is still good
    finally:
        await store.close()


# ---- serve() and enqueue across the fault ----------------------------------------------


async def test_serve_rides_out_redis_oom(
    fault_redis: FaultRedis, pg_dsn: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(pg_dsn, fault_redis.url, queue_name)
    caplog.set_level(logging.WARNING, logger="kyu_trio")
    async with serving(cfg) as ran:
        before = await enqueue(cfg, 3)
        await wait_until(lambda: ran >= set(before), 10, "the first jobs to run")

        set_maxmemory(fault_redis, 1)
        try:
            # The rows are committed, the push is refused: the ids come back, the refusal
            # is logged, nothing is raised (a retry would enqueue the jobs twice).
            during = await enqueue(cfg, 3)
            assert all(row_status(pg_dsn, i) == "pending" for i in during)
            pushes = [
                r.getMessage()
                for r in caplog.records
                if r.getMessage().startswith("could not push 3 jobs to Redis")
            ]
            assert len(pushes) == 1 and "answered with an error: OOM" in pushes[0], pushes
            await trio.sleep(1.0)  # the scheduler's and the reaper's writes are refused
            assert not ran & set(during)
        finally:
            set_maxmemory(fault_redis, 0)
        await wait_until(lambda: ran >= set(during), 10, "the jobs enqueued during the fault")
    check_outage_logged_once(caplog, "OOM command not allowed")


async def test_serve_rides_out_redis_readonly(
    fault_redis: FaultRedis, pg_dsn: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis demoted to a replica (REPLICAOF) mid-run, then promoted back (REPLICAOF NO
    ONE, with the new master's empty data set): the worker waits it out, then resyncs."""
    cfg = config(pg_dsn, fault_redis.url, queue_name)
    caplog.set_level(logging.WARNING, logger="kyu_trio")
    async with serving(cfg) as ran:
        before = await enqueue(cfg, 3)
        await wait_until(lambda: ran >= set(before), 10, "the first jobs to run")

        master = start_replica_of(fault_redis)
        try:
            during = await enqueue(cfg, 3)
            assert all(row_status(pg_dsn, i) == "pending" for i in during)
            assert any(
                "answered with an error: READONLY" in r.getMessage()
                for r in caplog.records
                if r.getMessage().startswith("could not push")
            )
            await trio.sleep(1.0)  # pops, claims of the epoch marker and pushes refused
            assert not ran & set(during)
        finally:
            promote(fault_redis)
            master.stop()
        await wait_until(lambda: ran >= set(during), 10, "the jobs enqueued during the fault")
    check_outage_logged_once(caplog, "READONLY")


async def test_serve_rides_out_postgres_read_only(
    own_db: str, redis_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """serve() on a PostgreSQL that answers every write with 25006 (a demoted primary):
    it connects (reads only), rides the refusals out, and once the server takes writes
    again its sessions opened while read-only are replaced and the jobs run."""
    dsn = _dsn_for(own_db)
    cfg = config(dsn, redis_url, queue_name)
    caplog.set_level(logging.WARNING, logger="kyu_trio")
    ids = await enqueue(cfg, 3)  # pending in PostgreSQL and in Redis
    set_read_only(own_db, True)
    try:
        async with serving(cfg) as ran:
            await trio.sleep(1.5)  # claims, promotions and rescues are refused meanwhile
            assert not ran
            assert all(row_status(dsn, i) == "pending" for i in ids)
            set_read_only(own_db, False)
            await wait_until(lambda: ran >= set(ids), 10, "the jobs to run after recovery")
    finally:
        set_read_only(own_db, False)
    assert {row_status(dsn, i) for i in ids} == {JobStatus.COMPLETED.value}
    check_outage_logged_once(caplog, "25006 cannot execute UPDATE in a read-only transaction")


async def test_enqueue_raises_only_kyu_errors_when_nothing_is_written(
    own_db: str, redis_url: str, queue_name: str
) -> None:
    """PostgreSQL refuses the INSERT: enqueue raises a ServerError and no row exists."""
    dsn = _dsn_for(own_db)
    cfg = config(dsn, redis_url, queue_name)
    await enqueue(cfg, 1)  # migrated
    set_read_only(own_db, True)
    async with Queue(cfg) as producer:
        with pytest.raises(ServerError, match=r"25006 cannot execute INSERT in a read-only"):
            await producer.enqueue("echo", "")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM kyu_jobs").fetchone() == (1,)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zcard(queue_name) == 1
    finally:
        client.close()
