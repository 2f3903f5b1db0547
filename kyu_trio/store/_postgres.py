"""`PostgresStore`: the `Store` on PostgreSQL through psycopg 3 and psycopg-pool.

psycopg's calls block, so each one runs in a worker thread (`trio.to_thread.run_sync`)
through a `trio.CapacityLimiter` sized to the pool: a thread never waits for a
connection. A multi-statement transaction is always one thread call. psycopg objects
never cross into trio code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg.rows import TupleRow

from .._dsn import mask_password, postgres_address
from .._errors import KyuConnectionError, KyuError, SchemaError
from .._job import Job, JobStatus
from .._ports import (
    CancelOutcome,
    CancelResult,
    Failure,
    Lease,
    NewJob,
    QueueStats,
    Ready,
    Rescue,
)
from . import _queries as q

T = TypeVar("T")

CONNECT_TIMEOUT = 5
#: Connections for claims and heartbeats (a fetcher or two and the heartbeat use them).
LEASE_POOL_SIZE = 4


def _migrations() -> list[tuple[int, str]]:
    files = resources.files("kyu_trio.store").joinpath("sql")
    found = []
    for entry in files.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


SCHEMA_VERSION = max(v for v, _ in _migrations())


def _to_job(row: TupleRow) -> Job:
    (id_, queue, job_type, payload, status, priority, scheduled_at, max_retries, retry_count,
     error_message, locked_by, locked_at, completed_at, job_timeout, created_at, updated_at,
     attempt, heartbeat_at) = row
    return Job(
        id=str(id_), queue=queue, job_type=job_type, payload=payload,
        status=JobStatus(status), priority=priority, scheduled_at=scheduled_at,
        max_retries=max_retries, retry_count=retry_count, error_message=error_message,
        locked_by=locked_by, locked_at=locked_at, completed_at=completed_at,
        job_timeout=job_timeout, created_at=created_at, updated_at=updated_at,
        attempt=attempt, heartbeat_at=heartbeat_at,
    )


_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _uuid_array(ids: Sequence[str]) -> str:
    """The ids as one PostgreSQL array literal, for a ``%s::uuid[]`` parameter; strings
    that are not UUIDs (a stray member of the Redis set) are skipped.

    One joined string instead of a list: psycopg adapts a list element by element in
    Python, which cost more than the claim's own round trip on the hot path."""
    return "{" + ",".join(i for i in ids if _UUID_TEXT.fullmatch(i)) + "}"


def _ints(values: Sequence[int]) -> str:
    """Ints as one PostgreSQL array literal, for a ``%s::int[]`` parameter."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema up to date; safe when many processes start at once."""
    with conn.transaction():
        conn.execute(q.MIGRATION_LOCK)
        conn.execute(q.CREATE_VERSION_TABLE)
        row = conn.execute(q.CURRENT_VERSION).fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has kyu-trio schema version {current}, newer than this "
                f"kyu-trio understands ({SCHEMA_VERSION}): upgrade kyu-trio"
            )
        for version, sql in _migrations():
            if version > current:
                conn.execute(sql.encode())
                conn.execute(q.RECORD_VERSION, (version,))
    return max(current, SCHEMA_VERSION)


class PostgresStore:
    """Job state in PostgreSQL's ``kyu_jobs`` table."""

    def __init__(self, dsn: str, pool_size: int = 10, synchronous_commit: bool = True) -> None:
        self._dsn = dsn
        self._address = postgres_address(dsn)
        self._pool_size = pool_size
        self._synchronous_commit = synchronous_commit
        self._lease_pool_size = min(pool_size, LEASE_POOL_SIZE)
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._lease_pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._limiter = trio.CapacityLimiter(pool_size)
        self._lease_limiter = trio.CapacityLimiter(self._lease_pool_size)

    def _connection_error(self, exc: BaseException) -> KyuConnectionError:
        text = str(exc).strip()
        reason = mask_password(text.splitlines()[0] if text else "") or type(exc).__name__
        # The server answered but said no (no such database, bad password, no such role):
        # that is a setting to fix, not an outage to wait out.
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate.startswith(("28", "3D")) or "does not exist" in text or (
            "authentication" in text
        ):
            return KyuConnectionError(
                f"PostgreSQL at {self._address} refused the connection: {reason}"
            )
        return KyuConnectionError(
            f"PostgreSQL at {self._address} is unreachable or went away: {reason}"
        )

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T], *, lease: bool = False) -> T:
        """Run ``fn`` with a pooled connection in a worker thread. ``lease=True`` uses the
        pool whose commits do not wait for the WAL flush (claims and heartbeats)."""
        pool = self._lease_pool if lease else self._pool
        if pool is None:
            raise KyuError("the PostgreSQL store is not open")

        def call() -> T:
            with pool.connection() as conn:
                return fn(conn)

        limiter = self._lease_limiter if lease else self._limiter
        try:
            return await trio.to_thread.run_sync(call, limiter=limiter)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise self._connection_error(exc) from None

    def _new_pool(self, size: int, synchronous_commit: bool) -> psycopg_pool.ConnectionPool[Any]:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT}
        if not synchronous_commit:
            kwargs["options"] = "-c synchronous_commit=off"
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self._dsn, min_size=1, max_size=size, open=False, kwargs=kwargs, timeout=30,
            name="kyu_trio",
        )
        pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        return pool

    async def open(self) -> None:
        def connect_and_migrate() -> None:
            # One direct connection first: its error names the real cause, where a
            # pool would only say it timed out.
            with psycopg.connect(self._dsn, connect_timeout=CONNECT_TIMEOUT) as conn:
                migrate(conn)
            self._pool = self._new_pool(self._pool_size, self._synchronous_commit)
            # A claim or heartbeat lost in a PostgreSQL crash costs nothing: the row is
            # still pending (the reaper's sweep pushes it again) or its lease looks stale
            # (the reaper rescues it); later writes are fenced by the claim token either
            # way. So they need not wait for the WAL flush, which costs ~1-2 ms each.
            self._lease_pool = self._new_pool(self._lease_pool_size, synchronous_commit=False)

        try:
            await trio.to_thread.run_sync(connect_and_migrate)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            await self.close()
            raise self._connection_error(exc) from None
        except psycopg.ProgrammingError as exc:
            await self.close()
            raise KyuConnectionError(
                f"PostgreSQL at {self._address} refused the connection settings: "
                f"{mask_password(str(exc))}"
            ) from None

    async def close(self) -> None:
        pools = [self._pool, self._lease_pool]
        self._pool = self._lease_pool = None
        for pool in pools:
            if pool is not None:
                await trio.to_thread.run_sync(pool.close)

    async def insert_jobs(
        self, jobs: Sequence[NewJob], now: datetime,
        after_commit: Callable[[list[Ready]], None] | None = None,
    ) -> list[Ready]:
        if len(jobs) == 1:
            job = jobs[0]

            def insert_one(conn: psycopg.Connection[Any]) -> list[Ready]:
                row = conn.execute(q.INSERT_ONE, {
                    "id": job.id, "queue": job.queue, "job_type": job.job_type,
                    "payload": job.payload, "status": job.status.value,
                    "priority": job.priority, "scheduled_at": job.scheduled_at,
                    "max_retries": job.max_retries, "job_timeout": job.job_timeout, "now": now,
                }).fetchone()
                assert row is not None
                ready = [Ready(job.id, job.priority, row[0])] if (
                    job.status is JobStatus.PENDING) else []
                if after_commit is not None:
                    after_commit(ready)  # autocommit: the INSERT is committed
                return ready

            return await self._run(insert_one)

        def insert_many(conn: psycopg.Connection[Any]) -> list[Ready]:
            seqs = sorted(r[0] for r in conn.execute(q.NEXT_SEQS, (len(jobs),)))
            # One statement: COPY writes every row or, on any error, none.
            with conn.cursor().copy(q.COPY_JOBS) as copy:
                for job, seq in zip(jobs, seqs, strict=True):
                    copy.write_row((
                        job.id, job.queue, job.job_type, job.payload, job.status.value,
                        job.priority, seq, job.scheduled_at, job.max_retries, job.job_timeout,
                        now, now,
                    ))
            ready = [Ready(job.id, job.priority, seq) for job, seq in zip(jobs, seqs, strict=True)
                     if job.status is JobStatus.PENDING]
            if after_commit is not None:
                after_commit(ready)  # autocommit: the COPY is committed
            return ready

        return await self._run(insert_many)

    async def get_job(self, job_id: str) -> Job | None:
        def get(conn: psycopg.Connection[Any]) -> Job | None:
            row = conn.execute(q.GET_JOB, (job_id,)).fetchone()
            return _to_job(row) if row else None

        return await self._run(get)

    async def cancel_job(self, job_id: str, now: datetime) -> CancelResult:
        def cancel(conn: psycopg.Connection[Any]) -> CancelResult:
            row = conn.execute(q.CANCEL_JOB, {"id": job_id, "now": now}).fetchone()
            assert row is not None
            cancelled_queue, existing_queue = row
            if cancelled_queue is not None:
                return CancelResult(CancelOutcome.CANCELLED, cancelled_queue)
            if existing_queue is not None:
                return CancelResult(CancelOutcome.NOT_CANCELLABLE, existing_queue)
            return CancelResult(CancelOutcome.NOT_FOUND)

        return await self._run(cancel)

    async def dead_jobs(self, queue: str, limit: int) -> list[Job]:
        def dead(conn: psycopg.Connection[Any]) -> list[Job]:
            return [_to_job(r) for r in conn.execute(q.DEAD_JOBS, (queue, limit)).fetchall()]

        return await self._run(dead)

    async def claim_jobs(
        self, queue: str, ids: Sequence[str], worker_id: str, now: datetime
    ) -> list[Job]:
        if not ids:
            return []

        def claim(conn: psycopg.Connection[Any]) -> list[Job]:
            uuids = _uuid_array(ids)
            if uuids == "{}":
                return []
            params = {"ids": uuids, "queue": queue, "worker": worker_id, "now": now}
            rows = conn.execute(q.CLAIM_JOBS, params).fetchall()
            # The columns the claim itself set are known without reading them back.
            return [
                Job(
                    id=str(id_), queue=queue, job_type=job_type, payload=payload,
                    status=JobStatus.RUNNING, priority=priority, scheduled_at=scheduled_at,
                    max_retries=max_retries, retry_count=retry_count,
                    error_message=error_message, locked_by=worker_id, locked_at=now,
                    completed_at=None, job_timeout=job_timeout, created_at=created_at,
                    updated_at=now, attempt=attempt, heartbeat_at=now,
                )
                for (id_, job_type, payload, priority, scheduled_at, max_retries, retry_count,
                     error_message, job_timeout, created_at, attempt) in rows
            ]

        claimed = await self._run(claim, lease=True)
        order = {job_id: i for i, job_id in enumerate(ids)}
        claimed.sort(key=lambda j: order.get(j.id, 0))
        return claimed

    def _lease_params(self, leases: Sequence[Lease], worker_id: str, now: datetime) -> Any:
        return {
            "ids": _uuid_array([lease.id for lease in leases]),
            "attempts": _ints([lease.attempt for lease in leases]),
            "worker": worker_id, "now": now,
        }

    async def complete_jobs(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> list[str]:
        if not leases:
            return []
        params = self._lease_params(leases, worker_id, now)

        def complete(conn: psycopg.Connection[Any]) -> list[str]:
            return [str(r[0]) for r in conn.execute(q.COMPLETE_JOBS, params).fetchall()]

        return await self._run(complete)

    async def fail_jobs(
        self, failures: Sequence[Failure], worker_id: str, now: datetime
    ) -> list[str]:
        if not failures:
            return []
        params = self._lease_params([f.lease for f in failures], worker_id, now)
        params["statuses"] = [f.status.value for f in failures]
        params["due"] = [f.due for f in failures]
        params["messages"] = [f.error_message for f in failures]

        def fail(conn: psycopg.Connection[Any]) -> list[str]:
            return [str(r[0]) for r in conn.execute(q.FAIL_JOBS, params).fetchall()]

        return await self._run(fail)

    async def requeue_jobs(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> list[Ready]:
        if not leases:
            return []
        params = self._lease_params(leases, worker_id, now)

        def requeue(conn: psycopg.Connection[Any]) -> list[Ready]:
            rows = conn.execute(q.REQUEUE_JOBS, params).fetchall()
            return sorted((Ready(str(r[0]), r[1], r[2]) for r in rows), key=lambda r: r.seq)

        return await self._run(requeue)

    async def heartbeat(self, leases: Sequence[Lease], worker_id: str, now: datetime) -> int:
        if not leases:
            return 0
        params = self._lease_params(leases, worker_id, now)

        def beat(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(q.HEARTBEAT, params).rowcount

        return await self._run(beat, lease=True)

    async def promote_due(self, queue: str, now: datetime, limit: int) -> list[Ready]:
        params = {"queue": queue, "now": now, "limit": limit}

        def promote(conn: psycopg.Connection[Any]) -> list[Ready]:
            rows = conn.execute(q.PROMOTE_DUE, params).fetchall()
            return sorted((Ready(str(r[0]), r[1], r[2]) for r in rows), key=lambda r: r.seq)

        return await self._run(promote)

    async def rescue_stale(
        self, queue: str, now: datetime, stale_before: datetime, limit: int
    ) -> Rescue:
        params = {"queue": queue, "now": now, "stale_before": stale_before, "limit": limit}

        def rescue(conn: psycopg.Connection[Any]) -> Rescue:
            rows = conn.execute(q.RESCUE_STALE, params).fetchall()
            requeued = sorted(
                (Ready(str(r[0]), r[2], r[3]) for r in rows if r[1] == "pending"),
                key=lambda r: r.seq,
            )
            return Rescue(requeued, [str(r[0]) for r in rows if r[1] == "dead"])

        return await self._run(rescue)

    async def pending_after(self, queue: str, after_seq: int, limit: int) -> list[Ready]:
        def page(conn: psycopg.Connection[Any]) -> list[Ready]:
            rows = conn.execute(q.PENDING_AFTER, (queue, after_seq, limit)).fetchall()
            return [Ready(str(r[0]), r[1], r[2]) for r in rows]

        return await self._run(page)

    async def queue_stats(self, queue: str, now: datetime) -> QueueStats:
        def stats(conn: psycopg.Connection[Any]) -> QueueStats:
            counts = dict.fromkeys(JobStatus, 0)
            for status, n in conn.execute(q.COUNT_BY_STATUS, (queue,)).fetchall():
                counts[JobStatus(status)] = int(n)
            row = conn.execute(q.OLDEST_DUE, {"queue": queue, "now": now}).fetchone()
            return QueueStats(counts, row[0] if row else None)

        return await self._run(stats)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def retry_jobs(self, ids: Sequence[str], now: datetime) -> list[tuple[Ready, str]]:
        params = {"ids": _uuid_array(ids), "now": now}

        def retry(conn: psycopg.Connection[Any]) -> list[tuple[Ready, str]]:
            rows = conn.execute(q.RETRY_JOBS, params).fetchall()
            return [(Ready(str(r[0]), r[1], r[2]), r[3]) for r in rows]

        return await self._run(retry)

    async def retry_dead(self, queue: str, now: datetime, limit: int) -> list[Ready]:
        params = {"queue": queue, "now": now, "limit": limit}

        def retry(conn: psycopg.Connection[Any]) -> list[Ready]:
            rows = conn.execute(q.RETRY_ALL_DEAD, params).fetchall()
            return sorted((Ready(str(r[0]), r[1], r[2]) for r in rows), key=lambda r: r.seq)

        return await self._run(retry)

    async def list_jobs(
        self, queue: str, status: JobStatus | None, job_type: str | None, limit: int
    ) -> list[Job]:
        params = {"queue": queue, "status": status.value if status else None,
                  "job_type": job_type, "limit": limit}

        def list_(conn: psycopg.Connection[Any]) -> list[Job]:
            return [_to_job(r) for r in conn.execute(q.LIST_JOBS, params).fetchall()]

        return await self._run(list_)

    async def completed_since(self, queue: str, since: datetime) -> int:
        def count(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(q.COMPLETED_SINCE, (queue, since)).fetchone()
            return int(row[0]) if row else 0

        return await self._run(count)

    async def purge(
        self, queue: str, statuses: Sequence[JobStatus], before: datetime, limit: int
    ) -> int:
        params = {"queue": queue, "statuses": [s.value for s in statuses], "before": before,
                  "limit": limit}

        def purge(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(q.PURGE, params).rowcount

        return await self._run(purge)

    async def pending_among(self, queue: str, ids: Sequence[str]) -> list[Ready]:
        params = {"queue": queue, "ids": _uuid_array(ids)}

        def pending(conn: psycopg.Connection[Any]) -> list[Ready]:
            rows = conn.execute(q.PENDING_AMONG, params).fetchall()
            return sorted((Ready(str(r[0]), r[1], r[2]) for r in rows), key=lambda r: r.seq)

        return await self._run(pending)
