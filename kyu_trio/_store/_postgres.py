"""`PostgresStore`: the `Store` on PostgreSQL through psycopg 3 and psycopg-pool.

psycopg's calls block, so each one runs in a worker thread (`trio.to_thread.run_sync`)
through a `trio.CapacityLimiter` sized to the pool: a thread never waits for a
connection. A multi-statement transaction is always one thread call. psycopg objects
never cross into trio code.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg.rows import TupleRow

from .._cron import CronEntry, CronState, initial_tick
from .._dsn import mask_password, postgres_address
from .._errors import (
    CommandError,
    KyuConnectionError,
    KyuError,
    SchemaError,
    ServerError,
    TransactionError,
)
from .._job import Attempt, Job, JobStatus
from .._ports import (
    CancelOutcome,
    CancelResult,
    Failure,
    Fence,
    Held,
    LeaderInfo,
    Lease,
    Limit,
    LimitedClaim,
    NewJob,
    Progress,
    QueueStats,
    Ready,
)
from .._processes import ProcessInfo
from .._validation import decode_payload
from . import _queries as q

T = TypeVar("T")

CONNECT_TIMEOUT = 5
#: Connections for claims and heartbeats (a fetcher or two and the heartbeat use them).
LEASE_POOL_SIZE = 4
#: How long closing a pool waits for each of its threads. One may be opening a
#: connection to a server that stopped answering; it ends by itself (CONNECT_TIMEOUT).
CLOSE_TIMEOUT = 0.2
#: TCP settings of every connection, unless the DSN sets them: a server whose host
#: vanished (powered off, network cut) is noticed within about half a minute, even by a
#: call waiting for its answer. A server that hangs on a live host (a stopped process,
#: a full disk) still acknowledges at TCP level and is not: against that, a cancelled
#: call cuts its own socket (see `_Call`).
TCP_SETTINGS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
#: Unacknowledged data is given up after this long (libpq 12 and later).
TCP_USER_TIMEOUT_MS = "20000"

#: Error replies that waiting may cure, by SQLSTATE class: transaction rollback:
#: serialization failure, deadlock (40), insufficient resources: disk full, out of memory,
#: too many connections (53), operator intervention: query canceled, admin shutdown,
#: cannot connect now (57), system error: I/O (58), snapshot too old (72), internal error
#: (XX). A worker rides these out like a lost connection.
TRANSIENT_CLASSES = ("40", "53", "57", "58", "72", "XX")
#: ... and by code: read-only transaction (a demoted primary, a replica), object in use,
#: lock not available.
TRANSIENT_CODES = frozenset({"25006", "55006", "55P03"})
READ_ONLY = "25006"
#: Errors of a migration that say it cannot run here (read-only, no privilege, a standby
#: in recovery), rather than that it failed on the way.
CANNOT_MIGRATE = frozenset({"25006", "42501", "55000"})


def _tcp_settings(dsn: str) -> dict[str, Any]:
    """`TCP_SETTINGS` without those the DSN sets itself."""
    from psycopg.conninfo import conninfo_to_dict

    settings: dict[str, Any] = dict(TCP_SETTINGS)
    if psycopg.pq.version() >= 120000:
        settings["tcp_user_timeout"] = TCP_USER_TIMEOUT_MS
    given = conninfo_to_dict(dsn)
    return {k: v for k, v in settings.items() if k not in given}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return mask_password(text.splitlines()[0] if text else "") or type(exc).__name__


class _Abandoned(Exception):
    """The task stopped waiting before the thread began: nothing was sent."""


class _Call:
    """The connection one thread call is using, so that the task can cut it when it stops
    waiting (cancelled). A thread blocked on a server that stopped answering would
    otherwise wait until the server resumes, holding its connection and its limiter
    token; with its socket shut down, its wait ends at once in an error and the pool
    replaces the connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._abandoned = False

    def attach(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if self._abandoned:
                raise _Abandoned
            self._conn = conn

    def detach(self) -> None:
        with self._lock:
            self._conn = None

    def unless_abandoned(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` (in the thread) unless the task stopped waiting; True if it ran."""
        with self._lock:
            if self._abandoned:
                return False
            fn()
            return True

    def abandon(self) -> None:
        # Under the lock: the thread cannot detach the connection meanwhile, and so not
        # hand it back to the pool for another call to use. The socket is shut down,
        # never closed, so its fd stays the thread's (no other file can take its number).
        with self._lock:
            self._abandoned = True
            if self._conn is not None:
                with suppress(psycopg.Error, OSError):
                    fd = self._conn.pgconn.socket
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                self._conn = None


def _forget_sessions(pool: psycopg_pool.ConnectionPool[Any], conn: psycopg.Connection[Any]) -> None:
    """Replace the pool's connections: they belong to a server that turned read-only (a
    demoted primary, or default_transaction_read_only set since they were opened), and
    would stay so after a failover moved the DSN's name to the new primary."""
    drain = getattr(pool, "drain", None)  # psycopg-pool 3.3
    if drain is not None:
        drain()
    else:
        conn.close()


def _migrations() -> list[tuple[int, str]]:
    files = resources.files("kyu_trio._store").joinpath("sql")
    found = []
    for entry in files.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


SCHEMA_VERSION = max(v for v, _ in _migrations())


def _to_job(row: TupleRow, attempts_kept: int | None = None) -> Job:
    """THE mapper from a row of `q.JOB_COLUMNS` (optionally followed by the attempt
    history column of `q.GET_JOB`) to a `Job`; ``attempts_kept`` keeps only that many of
    the most recent attempts."""
    (
        id_,
        queue,
        job_type,
        payload,
        status,
        priority,
        scheduled_at,
        max_retries,
        retry_count,
        error_message,
        locked_by,
        locked_at,
        completed_at,
        job_timeout,
        created_at,
        updated_at,
        attempt,
        heartbeat_at,
        result,
        unique_key,
    ) = row[:20]
    # Columns later migrations appended to JOB_COLUMNS, in its order; then the history.
    progress, trace_context = row[20:22]
    attempts: tuple[Attempt, ...] = ()
    if len(row) > 22 and row[22]:
        attempts = tuple(_to_attempt(a) for a in row[22])
        if attempts_kept is not None:
            attempts = attempts[-attempts_kept:]
    return Job(
        id=str(id_),
        queue=queue,
        job_type=job_type,
        payload=decode_payload(payload),
        status=JobStatus(status),
        priority=priority,
        scheduled_at=scheduled_at,
        max_retries=max_retries,
        retry_count=retry_count,
        error_message=error_message,
        locked_by=locked_by,
        locked_at=locked_at,
        completed_at=completed_at,
        job_timeout=job_timeout,
        created_at=created_at,
        updated_at=updated_at,
        attempt=attempt,
        heartbeat_at=heartbeat_at,
        result=result,
        attempts=attempts,
        unique_key=unique_key,
        progress=progress,
        trace_context=trace_context,
    )


def _claimed_job(row: TupleRow, queue: str, worker_id: str, now: datetime) -> Job:
    """A row of `q.CLAIMED_COLUMNS` as the `Job` the claim made: the columns the claim
    itself set are known without reading them back."""
    (
        id_,
        job_type,
        payload,
        priority,
        scheduled_at,
        max_retries,
        retry_count,
        error_message,
        job_timeout,
        created_at,
        attempt,
        unique_key,
        trace_context,
    ) = row[:13]
    return Job(
        id=str(id_),
        queue=queue,
        job_type=job_type,
        payload=decode_payload(payload),
        status=JobStatus.RUNNING,
        priority=priority,
        scheduled_at=scheduled_at,
        max_retries=max_retries,
        retry_count=retry_count,
        error_message=error_message,
        locked_by=worker_id,
        locked_at=now,
        completed_at=None,
        job_timeout=job_timeout,
        created_at=created_at,
        updated_at=now,
        attempt=attempt,
        heartbeat_at=now,
        unique_key=unique_key,
        trace_context=trace_context,
    )


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _to_attempt(data: dict[str, Any]) -> Attempt:
    """One element of the JSON history of `q.ATTEMPTS_OF_ROW`."""
    return Attempt(
        attempt=data["attempt"],
        worker_id=data["worker_id"],
        started_at=_when(data["started_at"]),
        finished_at=_when(data["finished_at"]),
        outcome=data["outcome"],
        error=data["error"],
        traceback=data["traceback"],
    )


def _jsonb_array(texts: Sequence[str | None]) -> str:
    """JSON texts as one PostgreSQL array literal, for a ``%s::jsonb[]`` parameter (one
    string: psycopg would adapt a list element by element)."""
    return (
        "{"
        + ",".join(
            "NULL" if t is None else '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for t in texts
        )
        + "}"
    )


_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _uuid_array(ids: Sequence[str]) -> str:
    """The ids as one PostgreSQL array literal, for a ``%s::uuid[]`` parameter; strings
    that are not UUIDs (a stray member of the Redis set) are skipped.

    One joined string instead of a list: psycopg adapts a list element by element in
    Python, which cost more than the claim's own round trip on the hot path."""
    return "{" + ",".join(i for i in ids if _UUID_TEXT.fullmatch(i)) + "}"


def cancel_params(ids: Sequence[str], now: datetime) -> dict[str, Any]:
    """The parameters of `CANCEL_JOBS` (canonical ids: `cancel_job` passes one)."""
    return {"ids": _uuid_array(ids), "now": now}


def cancel_results(rows: Sequence[TupleRow]) -> dict[str, CancelResult]:
    """What the rows of `CANCEL_JOBS` mean: job id -> its `CancelResult` (unknown ids
    have no row, so no entry)."""
    return {
        str(job_id): CancelResult(
            CancelOutcome.CANCELLED if cancelled else CancelOutcome.NOT_CANCELLABLE, queue
        )
        for job_id, queue, cancelled in rows
    }


def process_params(queue: str, process: ProcessInfo, ttl: float) -> dict[str, Any]:
    """The parameters of `RECORD_PROCESS`."""
    return {
        "queue": queue,
        "process_id": process.process_id,
        "host": process.host,
        "pid": process.pid,
        "workers": process.workers,
        "started_at": process.started_at,
        "last_seen": process.last_seen,
        "expires_at": process.last_seen + timedelta(seconds=ttl),
    }


def to_processes(rows: Sequence[TupleRow]) -> list[ProcessInfo]:
    """The rows of `PROCESSES` as `ProcessInfo`."""
    return [
        ProcessInfo(
            process_id=process_id,
            host=host,
            pid=pid,
            workers=workers,
            started_at=started_at,
            last_seen=last_seen,
            leader=bool(leader),
        )
        for process_id, host, pid, workers, started_at, last_seen, leader in rows
    ]


def run_cron_params(
    queue: str, name: str, job_id: str, now: datetime, default_job_timeout: float
) -> dict[str, Any]:
    """The parameters of `RUN_CRON_NOW`."""
    return {
        "queue": queue,
        "name": name,
        "id": job_id,
        "now": now,
        "default_job_timeout": default_job_timeout,
    }


def _ints(values: Sequence[int]) -> str:
    """Ints as one PostgreSQL array literal, for a ``%s::int[]`` parameter."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def insert_one_params(job: NewJob, now: datetime, *, notify: bool = False) -> dict[str, Any]:
    """The parameters of `INSERT_ONE` for ``job``: one home for every insert path.
    ``notify``: the row is written in the caller's transaction, and its trigger tells
    the serving workers to push it at COMMIT (`needs_push`)."""
    return {
        "id": job.id,
        "queue": job.queue,
        "job_type": job.job_type,
        "payload": job.payload,
        "status": job.status.value,
        "priority": job.priority,
        "scheduled_at": job.scheduled_at,
        "max_retries": job.max_retries,
        "job_timeout": job.job_timeout,
        "now": now,
        "needs_push": notify and job.status is JobStatus.PENDING,
        "unique_key": job.unique_key,  # read by INSERT_UNIQUE and UNIQUE_HOLDER only
        "trace_context": job.trace_context,
    }


def copy_row(job: NewJob, seq: int, now: datetime, *, notify: bool = False) -> tuple[Any, ...]:
    """One row of `COPY_JOBS` for ``job``, with its sequence number drawn first
    (``notify`` as for `insert_one_params`)."""
    return (
        job.id,
        job.queue,
        job.job_type,
        job.payload,
        job.status.value,
        job.priority,
        seq,
        job.scheduled_at,
        job.max_retries,
        job.job_timeout,
        now,
        now,
        notify and job.status is JobStatus.PENDING,
        job.trace_context,
    )


def _insert_new(
    conn: psycopg.Connection[Any],
    jobs: Sequence[NewJob],
    now: datetime,
    *,
    notify: bool = False,
    existing: dict[str, str] | None = None,
) -> list[Ready]:
    """Write new rows; return the pending ones. On a pooled connection (autocommit) they
    are committed on return; with ``notify``, they are the caller's, in the caller's
    transaction, and pushed by the serving workers when it commits. A job whose
    `unique_key` an unfinished job holds is not written: ``existing`` maps its id to
    the holder's."""
    if any(job.unique_key is not None for job in jobs):
        # A savepoint inside the caller's transaction; on a pooled connection, one
        # transaction, so that the batch is still written whole or not at all.
        with conn.transaction():
            return _insert_keyed(conn, jobs, now, notify, {} if existing is None else existing)
    return _insert_plain(conn, jobs, now, notify=notify)


def _insert_keyed(
    conn: psycopg.Connection[Any],
    jobs: Sequence[NewJob],
    now: datetime,
    notify: bool,
    existing: dict[str, str],
) -> list[Ready]:
    """`_insert_new` for a batch where some jobs carry a `unique_key`: COPY cannot skip a
    conflicting row, so those go in one INSERT ... ON CONFLICT DO NOTHING (the jobs
    without a key keep the fast path). A key repeated in the batch conflicts with the
    batch's own earlier row: one job per key. A skipped job's holder is looked up in one
    query; one that finished in between (its key free again) is tried once more alone."""
    ready = _insert_plain(conn, [j for j in jobs if j.unique_key is None], now, notify=notify)
    keyed = [j for j in jobs if j.unique_key is not None]
    if len(keyed) == 1:
        return ready + _insert_unique_one(conn, keyed[0], now, notify, existing)
    rows = [insert_one_params(job, now, notify=notify) for job in keyed]
    columns = ("id", "queue", "job_type", "payload", "status", "priority", "scheduled_at")
    params: dict[str, Any] = {c: [r[c] for r in rows] for c in columns}
    for c in ("max_retries", "job_timeout", "needs_push", "unique_key", "trace_context"):
        params[c] = [r[c] for r in rows]
    params["now"] = now
    written = dict(conn.execute(q.INSERT_UNIQUE_MANY, params).fetchall())
    skipped = [job for job in keyed if job.id not in written]
    holders: dict[tuple[str, str], str] = {}
    if skipped:
        pairs = {"queue": [j.queue for j in skipped], "unique_key": [j.unique_key for j in skipped]}
        for queue, key, holder in conn.execute(q.UNIQUE_HOLDERS, pairs):
            holders[queue, key] = holder
    for job in keyed:
        if job.id in written:
            if job.status is JobStatus.PENDING:
                ready.append(Ready(job.id, job.priority, written[job.id]))
            continue
        assert job.unique_key is not None
        holder = holders.get((job.queue, job.unique_key))
        if holder is not None:
            existing[job.id] = holder
        else:
            ready.extend(_insert_unique_one(conn, job, now, notify, existing))
    return ready


def _insert_unique_one(
    conn: psycopg.Connection[Any],
    job: NewJob,
    now: datetime,
    notify: bool,
    existing: dict[str, str],
) -> list[Ready]:
    """One job with a `unique_key`: written, or ``existing`` names its holder."""
    params = insert_one_params(job, now, notify=notify)
    while True:
        row = conn.execute(q.INSERT_UNIQUE, params).fetchone()
        if row is not None:
            return [Ready(job.id, job.priority, row[0])] if job.status is JobStatus.PENDING else []
        holder = conn.execute(q.UNIQUE_HOLDER, params).fetchone()
        if holder is not None:
            existing[job.id] = holder[0]
            return []
        # The holder finished between the two statements: the key is free again.


def _insert_plain(
    conn: psycopg.Connection[Any], jobs: Sequence[NewJob], now: datetime, *, notify: bool = False
) -> list[Ready]:
    """`_insert_new` for jobs without a `unique_key`: one INSERT, or one COPY."""
    if not jobs:
        return []
    if len(jobs) == 1:
        job = jobs[0]
        row = conn.execute(q.INSERT_ONE, insert_one_params(job, now, notify=notify)).fetchone()
        assert row is not None
        return [Ready(job.id, job.priority, row[0])] if job.status is JobStatus.PENDING else []
    seqs = sorted(r[0] for r in conn.execute(q.NEXT_SEQS, (len(jobs),)))
    # One statement: COPY writes every row or, on any error, none.
    with conn.cursor().copy(q.COPY_JOBS) as copy:
        for job, seq in zip(jobs, seqs, strict=True):
            copy.write_row(copy_row(job, seq, now, notify=notify))
    return [
        Ready(job.id, job.priority, seq)
        for job, seq in zip(jobs, seqs, strict=True)
        if job.status is JobStatus.PENDING
    ]


def connection_error(exc: BaseException, address: str) -> KyuConnectionError:
    """The `KyuConnectionError` for a failed connection to PostgreSQL at ``address``."""
    text = str(exc).strip()
    reason = mask_password(text.splitlines()[0] if text else "") or type(exc).__name__
    # The server answered but said no (no such database, bad password, no such role):
    # that is a setting to fix, not an outage to wait out.
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate.startswith(("28", "3D")) or "does not exist" in text or ("authentication" in text):
        return KyuConnectionError(f"PostgreSQL at {address} refused the connection: {reason}")
    return KyuConnectionError(f"PostgreSQL at {address} is unreachable or went away: {reason}")


def map_error(exc: psycopg.Error, address: str) -> KyuError:
    """The KyuError for a psycopg exception: an outage to ride out (a lost connection,
    or a `ServerError`), or a `CommandError` that waiting will not cure."""
    sqlstate = exc.sqlstate or ""
    # An error reply means the statement did not commit (callers rely on that: an
    # enqueue refused by the server wrote nothing), except after a PANIC, which may
    # strike during the commit itself: then the outcome is unknown, as when the
    # connection is lost.
    if exc.diag.severity_nonlocalized == "PANIC":
        return connection_error(exc, address)
    if not sqlstate or sqlstate.startswith(("08", "28", "3D")):
        if sqlstate or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return connection_error(exc, address)
        # Refused by psycopg before anything was sent (e.g. a NUL in a string).
        return CommandError(
            f"could not send a command to PostgreSQL at {address}: {_first_line(exc)}"
        )
    reason = f"{sqlstate} {_first_line(exc)}"
    if sqlstate in TRANSIENT_CODES or sqlstate.startswith(TRANSIENT_CLASSES):
        return ServerError(f"PostgreSQL at {address} answered with an error: {reason}")
    return CommandError(f"PostgreSQL at {address} refused a command: {reason}")


# ---- enqueue through the caller's connection (`conn=`) ----------------------------------

#: Connections whose database was found to have the schema: checked once each (a
#: connection never changes database), not on every enqueue.
_SCHEMA_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()

#: What the docs tell a caller who holds a Django or SQLAlchemy connection.
_CONN_HINT = (
    "from Django use django.db.connection.connection inside transaction.atomic(), from "
    "SQLAlchemy session.connection().connection.driver_connection (postgresql+psycopg)"
)


def caller_address(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """Where a caller's connection goes, for messages (never its password)."""
    try:
        return f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    except psycopg.Error:
        return "the caller's connection"


def caller_conn_problem(conn: object, expected: type[Any]) -> TransactionError | None:
    """Why ``conn`` (given as ``conn=``) cannot take an enqueue, or None. No I/O."""
    if not isinstance(conn, expected):
        return TransactionError(
            f"conn= takes a {expected.__module__.split('.')[0]}.{expected.__qualname__} "
            f"(psycopg 3), not {type(conn).__module__}.{type(conn).__qualname__}: "
            f"{_CONN_HINT}"
        )
    assert isinstance(conn, psycopg.Connection | psycopg.AsyncConnection)
    if conn.closed:
        return TransactionError(f"conn= is closed ({caller_address(conn)})")
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        return TransactionError(
            f"the transaction of conn= ({caller_address(conn)}) has failed (an earlier "
            "statement raised an error): roll it back, then enqueue in a new transaction"
        )
    return None


def schema_missing(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> SchemaError:
    return SchemaError(
        f"the database of conn= ({caller_address(conn)}) has no kyu-trio schema (version "
        f"{SCHEMA_VERSION} or later): run `kyu-trio migrate` against it, or connect a Queue "
        "or Client to it once, before enqueueing through it"
    )


def schema_known(conn: object) -> bool:
    return conn in _SCHEMA_CHECKED


def schema_found(conn: object) -> None:
    _SCHEMA_CHECKED.add(conn)


def insert_in_transaction(
    conn: psycopg.Connection[Any],
    jobs: Sequence[NewJob],
    now: datetime,
    existing: dict[str, str] | None = None,
) -> None:
    """Write ``jobs`` through the caller's ``conn``, in its current transaction, never
    committing it: the workers push them when (if) the caller commits. Blocking.
    ``existing``: as for `_insert_new`."""
    problem = caller_conn_problem(conn, psycopg.Connection)
    if problem is not None:
        raise problem
    try:
        if not schema_known(conn):
            row = conn.execute(q.SCHEMA_READY).fetchone()
            if not (row and row[0]):
                raise schema_missing(conn)
            schema_found(conn)
        _insert_new(conn, jobs, now, notify=True, existing=existing)
    except psycopg.Error as exc:
        raise map_error(exc, caller_address(conn)) from None


def _installed_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version the database records, 0 for none. Only reads."""
    try:
        row = conn.execute(q.CURRENT_VERSION).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def _check_not_newer(current: int) -> None:
    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"the database has kyu-trio schema version {current}, newer than this "
            f"kyu-trio understands ({SCHEMA_VERSION}): upgrade kyu-trio"
        )


def migrate(conn: psycopg.Connection[Any], where: str = "the database") -> int:
    """Bring the schema up to date; safe when many processes start at once. ``conn`` is
    in autocommit mode. Returns the version found before (0 for none).

    It writes only when a migration is due, so that a current schema can be used through
    a read-only server (a replica) or a read-only user."""
    current = _installed_version(conn)
    _check_not_newer(current)
    if current == SCHEMA_VERSION:
        return current
    try:
        with conn.transaction():
            conn.execute(q.MIGRATION_LOCK)
            conn.execute(q.CREATE_VERSION_TABLE)
            # Another process may have migrated while we waited for the lock.
            current = _installed_version(conn)
            _check_not_newer(current)
            for version, sql in _migrations():
                if version > current:
                    conn.execute(sql.encode())
                    conn.execute(q.RECORD_VERSION, (version,))
    except psycopg.Error as exc:
        if (exc.sqlstate or "") not in CANNOT_MIGRATE:
            raise
        found = f"kyu-trio schema version {current}" if current else "no kyu-trio schema"
        raise SchemaError(
            f"{where} has {found}, this kyu-trio needs version {SCHEMA_VERSION}, and it "
            f"cannot migrate there ({exc.sqlstate} {_first_line(exc)}): run `kyu-trio "
            f"migrate` once against the primary, as a user that may create tables"
        ) from None
    return current  # as found under the lock: another process may have migrated first


class PostgresStore:
    """Job state in PostgreSQL's ``kyu_jobs`` table."""

    def __init__(
        self,
        dsn: str,
        pool_size: int = 10,
        synchronous_commit: bool = True,
        attempts_kept: int = 20,
    ) -> None:
        self._dsn = dsn
        self._attempts_kept = attempts_kept
        self._address = postgres_address(dsn)
        self._pool_size = pool_size
        self._synchronous_commit = synchronous_commit
        self._lease_pool_size = min(pool_size, LEASE_POOL_SIZE)
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._lease_pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._limiter = trio.CapacityLimiter(pool_size)
        self._lease_limiter = trio.CapacityLimiter(self._lease_pool_size)
        self._found_version = 0

    def _connection_error(self, exc: BaseException) -> KyuConnectionError:
        return connection_error(exc, self._address)

    def _error(self, exc: psycopg.Error) -> KyuError:
        return map_error(exc, self._address)

    async def _in_thread(
        self, fn: Callable[[_Call], T], limiter: trio.CapacityLimiter | None = None
    ) -> T:
        """Run ``fn`` in a worker thread; no psycopg exception leaves. A cancelled call
        stops waiting at once and cuts the connection ``fn`` attached: its outcome is
        unknown, as when a connection is lost mid-call (which is why every write is
        fenced by its lease or conditional on the row's state)."""
        call = _Call()
        try:
            return await trio.to_thread.run_sync(fn, call, limiter=limiter, abandon_on_cancel=True)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        except BaseException:
            # Cancelled (or KeyboardInterrupt) while the thread may still be running; a
            # no-op if it had ended.
            call.abandon()
            raise

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T], *, lease: bool = False) -> T:
        """Run ``fn`` with a pooled connection in a worker thread (see `_in_thread`).
        ``lease=True`` uses the pool whose commits do not wait for the WAL flush (claims
        and heartbeats)."""
        pool = self._lease_pool if lease else self._pool
        if pool is None:
            raise KyuError("the PostgreSQL store is not open")

        def run(call: _Call) -> T:
            with pool.connection() as conn:
                call.attach(conn)
                read_only = False
                try:
                    return fn(conn)
                except psycopg.Error as exc:
                    read_only = exc.sqlstate == READ_ONLY
                    raise
                finally:
                    call.detach()
                    if read_only:
                        _forget_sessions(pool, conn)

        return await self._in_thread(run, self._lease_limiter if lease else self._limiter)

    def _new_pool(self, size: int, synchronous_commit: bool) -> psycopg_pool.ConnectionPool[Any]:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            **_tcp_settings(self._dsn),
        }
        if not synchronous_commit:
            kwargs["options"] = "-c synchronous_commit=off"
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self._dsn,
            min_size=1,
            max_size=size,
            open=False,
            kwargs=kwargs,
            timeout=30,
            name="kyu_trio",
        )
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        except BaseException:
            pool.close(CLOSE_TIMEOUT)  # its threads would go on connecting
            raise
        return pool

    async def open(self) -> None:
        def connect_and_migrate(call: _Call) -> None:
            # One direct connection first: its error names the real cause, where a
            # pool would only say it timed out.
            try:
                conn = psycopg.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT,
                    **_tcp_settings(self._dsn),
                )
            except psycopg.ProgrammingError as exc:
                raise KyuConnectionError(
                    f"PostgreSQL at {self._address} refused the connection settings: "
                    f"{_first_line(exc)}"
                ) from None
            with conn:
                call.attach(conn)
                try:
                    self._found_version = migrate(conn, f"PostgreSQL at {self._address}")
                finally:
                    call.detach()
            pools = [self._new_pool(self._pool_size, self._synchronous_commit)]
            try:
                # A claim or heartbeat lost in a PostgreSQL crash costs nothing: the row is
                # still pending (the reaper's sweep pushes it again) or its lease looks
                # stale (the reaper rescues it); later writes are fenced by the claim token
                # either way. So they need not wait for the WAL flush (~1-2 ms each).
                pools.append(self._new_pool(self._lease_pool_size, synchronous_commit=False))

                def adopt() -> None:
                    self._pool, self._lease_pool = pools

                if call.unless_abandoned(adopt):
                    return
            except BaseException:
                for pool in pools:
                    pool.close(CLOSE_TIMEOUT)
                raise
            for pool in pools:  # open() was cancelled meanwhile: nobody will close them
                pool.close(CLOSE_TIMEOUT)

        try:
            await self._in_thread(connect_and_migrate)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close()
            raise

    async def close(self) -> None:
        pools = [p for p in (self._pool, self._lease_pool) if p is not None]
        self._pool = self._lease_pool = None
        # Bounded even against a server that stopped answering: idle connections close
        # without waiting for it, one still out (an abandoned call's) closes when it
        # comes back, and each pool thread is waited for CLOSE_TIMEOUT at most.
        async with trio.open_nursery() as nursery:
            for pool in pools:
                nursery.start_soon(self._close_pool, pool)

    @staticmethod
    async def _close_pool(pool: psycopg_pool.ConnectionPool[Any]) -> None:
        await trio.to_thread.run_sync(pool.close, CLOSE_TIMEOUT, abandon_on_cancel=True)

    async def insert_jobs(
        self,
        jobs: Sequence[NewJob],
        now: datetime,
        after_commit: Callable[[list[Ready]], None] | None = None,
        *,
        again: bool = False,
        existing: dict[str, str] | None = None,
    ) -> list[Ready]:
        def insert(conn: psycopg.Connection[Any]) -> list[Ready]:
            earlier: list[Ready] = []
            todo = jobs
            if again:
                # The earlier attempt's answer was lost: what it wrote is kept (COPY and a
                # single INSERT write every row or none, but a batch may be split).
                rows = conn.execute(q.INSERTED, {"ids": _uuid_array([j.id for j in jobs])})
                found = {job_id: (status, seq) for job_id, status, seq in rows.fetchall()}
                todo = [job for job in jobs if job.id not in found]
                earlier = [
                    Ready(job.id, job.priority, found[job.id][1])
                    for job in jobs
                    if found.get(job.id, ("",))[0] == JobStatus.PENDING.value
                ]
            ready = earlier + _insert_new(conn, todo, now, existing=existing)
            if after_commit is not None:
                after_commit(ready)  # autocommit: the rows are committed
            return ready

        return await self._run(insert)

    async def listen_enqueued(
        self,
        listening: Callable[[], None],
        deliver: Callable[[list[str]], None],
        cancelled: Callable[[list[str]], None] | None = None,
    ) -> None:
        """Listen for jobs enqueued in callers' transactions (``kyu_enqueued``) until
        cancelled, on a connection of its own: ``listening()`` once listening, then
        ``deliver(payloads)`` with each batch received, both called in trio. Raises
        `KyuConnectionError` when the connection fails (notifications sent meanwhile are
        lost: the reaper's sweep pushes their jobs).

        With ``cancelled``, also listens for running jobs that `cancel_job` cancelled
        (``kyu_cancelled``, payloads ``"<id> <queue>"``), handed over before the
        enqueued ones of the same packet (those lost meanwhile: the heartbeat finds
        them)."""

        def listen(call: _Call) -> None:
            conn = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                **_tcp_settings(self._dsn),
            )  # fmt: skip
            # The whole life of the connection is this one thread call, so that only
            # this thread ever touches it; a cancelled task cuts its socket (`_Call`),
            # which ends the wait below at once, and the thread closes it.
            with conn:
                call.attach(conn)
                try:
                    conn.execute(q.LISTEN_ENQUEUED)
                    if cancelled is not None:
                        conn.execute(q.LISTEN_CANCELLED)
                    trio.from_thread.run_sync(listening)
                    while True:
                        # stop_after=1: return with the first packet's notifications.
                        batch: list[str] = []
                        stopped: list[str] = []
                        for n in conn.notifies(stop_after=1):
                            is_cancel = n.channel == q.CANCELLED_CHANNEL
                            (stopped if is_cancel else batch).append(n.payload)
                        if stopped and cancelled is not None:
                            trio.from_thread.run_sync(cancelled, stopped)
                        if batch:
                            trio.from_thread.run_sync(deliver, batch)
                finally:
                    call.detach()

        await self._in_thread(listen)

    async def get_job(self, job_id: str) -> Job | None:
        def get(conn: psycopg.Connection[Any]) -> Job | None:
            row = conn.execute(q.GET_JOB, (job_id,)).fetchone()
            return _to_job(row, self._attempts_kept) if row else None

        return await self._run(get)

    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        uuids = _uuid_array(ids)
        if uuids == "{}":
            return []

        def get(conn: psycopg.Connection[Any]) -> list[Job]:
            return [_to_job(r) for r in conn.execute(q.GET_JOBS, (uuids,)).fetchall()]

        return await self._run(get)

    async def cancel_job(self, job_id: str, now: datetime) -> CancelResult:
        results = await self.cancel_jobs([job_id], now)
        return results.get(job_id, CancelResult(CancelOutcome.NOT_FOUND))

    async def cancel_jobs(self, ids: Sequence[str], now: datetime) -> dict[str, CancelResult]:
        params = cancel_params(ids, now)
        if params["ids"] == "{}":
            return {}

        def cancel(conn: psycopg.Connection[Any]) -> dict[str, CancelResult]:
            return cancel_results(conn.execute(q.CANCEL_JOBS, params).fetchall())

        return await self._run(cancel)

    async def delete_jobs(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        params = {"ids": _uuid_array(ids)}
        if params["ids"] == "{}":
            return []

        def delete(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
            return [(str(r[0]), r[1]) for r in conn.execute(q.DELETE_JOBS, params).fetchall()]

        return await self._run(delete)

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
            return [_claimed_job(row, queue, worker_id, now) for row in rows]

        claimed = await self._run(claim, lease=True)
        order = {job_id: i for i, job_id in enumerate(ids)}
        claimed.sort(key=lambda j: order.get(j.id, 0))
        return claimed

    async def _ready_rows(self, sql: str, params: Any) -> list[Ready]:
        """Run a statement that returns ``(id, priority, seq)`` rows: what to push, in seq
        order."""

        def ready(conn: psycopg.Connection[Any]) -> list[Ready]:
            rows = conn.execute(sql, params).fetchall()
            return sorted((Ready(str(r[0]), r[1], r[2]) for r in rows), key=lambda r: r.seq)

        return await self._run(ready)

    async def _ids(self, sql: str, params: Any) -> list[str]:
        """Run a write that returns the ids it changed."""

        def ids(conn: psycopg.Connection[Any]) -> list[str]:
            return [str(r[0]) for r in conn.execute(sql, params).fetchall()]

        return await self._run(ids)

    def _lease_params(self, leases: Sequence[Lease], worker_id: str, now: datetime) -> Any:
        return {
            "ids": _uuid_array([lease.id for lease in leases]),
            "attempts": _ints([lease.attempt for lease in leases]),
            "worker": worker_id,
            "now": now,
        }

    async def claimed_by(self, queue: str, ids: Sequence[str], worker_id: str) -> list[Job]:
        params = {"ids": _uuid_array(ids), "queue": queue, "worker": worker_id}

        def find(conn: psycopg.Connection[Any]) -> list[Job]:
            return [_to_job(r) for r in conn.execute(q.CLAIMED_BY, params).fetchall()]

        return await self._run(find)

    async def complete_jobs(
        self,
        leases: Sequence[Lease],
        worker_id: str,
        now: datetime,
        results: Sequence[str | None] | None = None,
    ) -> list[str]:
        if not leases:
            return []
        params = self._lease_params(leases, worker_id, now)
        if results is None or all(r is None for r in results):
            return await self._ids(q.COMPLETE_JOBS, params)
        params["results"] = _jsonb_array(results)
        return await self._ids(q.COMPLETE_JOBS_WITH_RESULTS, params)

    async def fail_jobs(
        self, failures: Sequence[Failure], worker_id: str, now: datetime
    ) -> list[str]:
        if not failures:
            return []
        params = self._lease_params([f.lease for f in failures], worker_id, now)
        params["statuses"] = [f.status.value for f in failures]
        params["due"] = [f.due for f in failures]
        params["messages"] = [f.error_message for f in failures]
        params["outcomes"] = [f.outcome for f in failures]
        params["tracebacks"] = [f.traceback for f in failures]
        params["keep"] = self._attempts_kept
        return await self._ids(q.FAIL_JOBS, params)

    async def requeue_jobs(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> list[Ready]:
        if not leases:
            return []
        params = self._lease_params(leases, worker_id, now)
        params["keep"] = self._attempts_kept
        return await self._ready_rows(q.REQUEUE_JOBS, params)

    async def heartbeat(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> dict[str, JobStatus | None]:
        if not leases:
            return {}
        params = self._lease_params(leases, worker_id, now)

        def beat(conn: psycopg.Connection[Any]) -> dict[str, JobStatus | None]:
            rows = conn.execute(q.HEARTBEAT, params).fetchall()
            return {job_id: None if s is None else JobStatus(s) for job_id, s in rows}

        return await self._run(beat, lease=True)

    async def promote_due(self, queue: str, now: datetime, limit: int) -> list[Ready]:
        params = {"queue": queue, "now": now, "limit": limit}

        return await self._ready_rows(q.PROMOTE_DUE, params)

    async def stale_jobs(
        self, queue: str, now: datetime, stale_before: datetime, limit: int
    ) -> list[Job]:
        params = {"queue": queue, "now": now, "stale_before": stale_before, "limit": limit}

        def stale(conn: psycopg.Connection[Any]) -> list[Job]:
            return [_to_job(r) for r in conn.execute(q.STALE_JOBS, params).fetchall()]

        return await self._run(stale)

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
            paused = conn.execute(q.IS_PAUSED, {"queue": queue}).fetchone()
            return QueueStats(counts, row[0] if row else None, bool(paused and paused[0]))

        return await self._run(stats)

    async def ping(self) -> None:
        """Raise `KyuConnectionError` unless PostgreSQL answers and accepts writes: a
        worker on a read-only server (a replica) cannot record anything."""

        def check(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute("SELECT current_setting('transaction_read_only')").fetchone()
            if row is not None and row[0] == "on":
                # As a write would fail, so that `_run` replaces stale sessions the same way.
                raise psycopg.errors.ReadOnlySqlTransaction(
                    "the server is read-only (a replica, or default_transaction_read_only "
                    "is on): workers cannot record anything"
                )

        await self._run(check)

    async def schema_version(self) -> tuple[int, int]:
        return self._found_version, await self._run(_installed_version)

    async def retry_jobs(self, ids: Sequence[str], now: datetime) -> list[tuple[Ready, str]]:
        params = {"ids": _uuid_array(ids), "now": now}

        def retry(conn: psycopg.Connection[Any]) -> list[tuple[Ready, str]]:
            rows = conn.execute(q.RETRY_JOBS, params).fetchall()
            return [(Ready(str(r[0]), r[1], r[2]), r[3]) for r in rows]

        return await self._run(retry)

    async def retry_dead(self, queue: str, now: datetime, limit: int) -> list[Ready]:
        params = {"queue": queue, "now": now, "limit": limit}

        return await self._ready_rows(q.RETRY_ALL_DEAD, params)

    async def list_jobs(
        self, queue: str, status: JobStatus | None, job_type: str | None, limit: int
    ) -> list[Job]:
        params = {
            "queue": queue,
            "status": status.value if status else None,
            "job_type": job_type,
            "limit": limit,
        }

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
        params = {
            "queue": queue,
            "statuses": [s.value for s in statuses],
            "before": before,
            "limit": limit,
        }

        def purge(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(q.PURGE, params).rowcount

        return await self._run(purge)

    async def pending_among(self, queue: str, ids: Sequence[str]) -> list[Ready]:
        params = {"queue": queue, "ids": _uuid_array(ids)}

        return await self._ready_rows(q.PENDING_AMONG, params)

    # ---- the maintenance leader's lease ----

    async def lead(self, queue: str, holder: str, now: datetime, ttl: float) -> Fence | None:
        params = {
            "queue": queue,
            "holder": holder,
            "now": now,
            "until": now + timedelta(seconds=ttl),
        }

        def lead(conn: psycopg.Connection[Any]) -> Fence | None:
            row = conn.execute(q.LEAD, params).fetchone()
            return None if row is None else Fence(row[0], row[1])

        return await self._run(lead)

    async def resign(self, queue: str, fence: Fence) -> None:
        params = {"queue": queue, "holder": fence.holder, "term": fence.term}

        def resign(conn: psycopg.Connection[Any]) -> None:
            conn.execute(q.RESIGN, params)

        await self._run(resign)

    async def leader(self, queue: str) -> LeaderInfo | None:
        def leader(conn: psycopg.Connection[Any]) -> LeaderInfo | None:
            row = conn.execute(q.LEADER, {"queue": queue}).fetchone()
            return None if row is None else LeaderInfo(row[0], row[1], row[2])

        return await self._run(leader)

    # ---- retention (the pruner) ----

    async def prune(self, queue: str, status: JobStatus, before: datetime, limit: int) -> int:
        sql = q.PRUNE.get(status.value)
        if sql is None:
            raise KyuError(f"only completed, cancelled and dead jobs can be pruned, not {status}")
        params = {"queue": queue, "before": before, "limit": limit}

        def prune(conn: psycopg.Connection[Any]) -> int:
            # Autocommit: the statement is its transaction, so its row locks last as long
            # as the statement does (a batch's worth of deletes).
            return conn.execute(sql, params).rowcount

        return await self._run(prune)

    # ---- cron: periodic jobs ----

    async def sync_cron(
        self, queue: str, entries: Sequence[CronEntry], now: datetime, fence: Fence
    ) -> bool:
        params = {
            "queue": queue,
            "holder": fence.holder,
            "term": fence.term,
            "now": now,
            "names": [e.name for e in entries],
            "schedules": [e.schedule for e in entries],
            "timezones": [e.timezone for e in entries],
            "job_types": [e.job_type for e in entries],
            "payloads": [e.payload for e in entries],
            "priorities": [e.priority for e in entries],
            "max_retries": [e.max_retries for e in entries],
            "job_timeouts": [e.job_timeout for e in entries],
            "missed": [e.missed for e in entries],
            "initial": [initial_tick(e, now) for e in entries],
        }

        def sync(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(q.SYNC_CRON, params).fetchone()
            return bool(row and row[0])

        return await self._run(sync)

    async def fire_cron(
        self,
        queue: str,
        name: str,
        expected: datetime,
        tick: datetime,
        job: NewJob | None,
        fence: Fence,
        now: datetime,
    ) -> list[Ready] | None:
        params: dict[str, Any] = {} if job is None else insert_one_params(job, now)
        if job is not None and job.queue != queue:
            raise KyuError(f"a cron job of queue {job.queue!r} fired for queue {queue!r}")
        params.update(
            queue=queue,
            name=name,
            expected=expected,
            tick=tick,
            now=now,
            holder=fence.holder,
            term=fence.term,
        )

        def fire(conn: psycopg.Connection[Any]) -> list[Ready] | None:
            if job is None:
                return [] if conn.execute(q.SKIP_CRON, params).rowcount else None
            row = conn.execute(q.FIRE_CRON, params).fetchone()
            if row is None:
                return None
            pending = job.status is JobStatus.PENDING
            return [Ready(job.id, job.priority, row[0])] if pending else []

        return await self._run(fire)

    async def cron_states(self, queue: str) -> list[CronState]:
        def states(conn: psycopg.Connection[Any]) -> list[CronState]:
            rows = conn.execute(q.CRON_STATES, {"queue": queue}).fetchall()
            return [CronState(*row) for row in rows]

        return await self._run(states)

    async def run_cron_now(
        self, queue: str, name: str, job_id: str, now: datetime, default_job_timeout: float
    ) -> Ready | None:
        params = run_cron_params(queue, name, job_id, now, default_job_timeout)

        def run_now(conn: psycopg.Connection[Any]) -> Ready | None:
            row = conn.execute(q.RUN_CRON_NOW, params).fetchone()
            return None if row is None else Ready(str(row[0]), row[1], row[2])

        return await self._run(run_now)

    # ---- pausing a queue, and limits per job type ----

    async def set_paused(self, queue: str, paused: bool, now: datetime) -> None:
        params = {"queue": queue, "paused": paused, "now": now}

        def set_paused(conn: psycopg.Connection[Any]) -> None:
            conn.execute(q.SET_PAUSED, params)

        await self._run(set_paused)

    async def is_paused(self, queue: str) -> bool:
        def paused(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(q.IS_PAUSED, {"queue": queue}).fetchone()
            return bool(row and row[0])

        return await self._run(paused)

    async def held_among(self, queue: str, ids: Sequence[str], now: datetime) -> Held:
        params = {"queue": queue, "ids": _uuid_array(ids), "now": now}

        def held(conn: psycopg.Connection[Any]) -> Held:
            paused, limited = False, defaultdict[str, list[str]](list)
            for is_paused, job_id, job_type, is_limited in conn.execute(q.HELD_AMONG, params):
                paused = paused or is_paused
                if is_limited:
                    limited[job_type].append(job_id)
            return Held(paused, {} if paused else dict(limited))

        return await self._run(held, lease=True)

    async def set_limits(
        self, queue: str, limits: dict[str, Limit], unlimited: Sequence[str], now: datetime
    ) -> None:
        rows = [
            {
                "queue": queue,
                "job_type": job_type,
                "concurrency": limit.concurrency,
                "rate_count": limit.rate_count,
                "rate_per": limit.rate_per,
                "now": now,
            }
            for job_type, limit in limits.items()
        ]

        def record(conn: psycopg.Connection[Any]) -> None:
            cleared = {"queue": queue, "job_types": list(unlimited)}
            stale = bool(unlimited) and bool(conn.execute(q.LIMITED_AMONG, cleared).fetchall())
            if not rows and not stale:
                return
            with conn.transaction():
                if rows:
                    conn.cursor().executemany(q.SET_LIMIT, rows)
                if stale:
                    conn.execute(q.CLEAR_LIMITS, cleared)

        await self._run(record)

    async def claim_limited(
        self, queue: str, job_type: str, ids: Sequence[str], worker_id: str, now: datetime
    ) -> LimitedClaim:
        params = {
            "queue": queue,
            "job_type": job_type,
            "ids": _uuid_array(ids),
            "worker": worker_id,
            "now": now,
        }

        called = time.monotonic()

        def claim(conn: psycopg.Connection[Any]) -> LimitedClaim:
            # Starts are counted in windows of time: stamp them when the claim runs, not
            # when it was asked for (the thread and the connection may have kept it).
            params["now"] = now + timedelta(seconds=time.monotonic() - called)
            with conn.transaction():
                conn.execute(q.LOCK_LIMIT, params)
                rows = conn.execute(q.LIMITED_CLAIM, params).fetchall()
            claimed = [_claimed_job(r, queue, worker_id, now) for r in rows if r[0] is not None]
            order = {job_id: i for i, job_id in enumerate(ids)}
            claimed.sort(key=lambda j: order.get(j.id, 0))
            next_start = next((r[-1] for r in rows if r[0] is None), None)
            return LimitedClaim(claimed, next_start)

        return await self._run(claim, lease=True)

    # ---- progress of running jobs (issue 14) ----

    async def set_progress(self, updates: Sequence[Progress], worker_id: str) -> list[str]:
        if not updates:
            return []
        params = {
            "ids": _uuid_array([u.lease.id for u in updates]),
            "attempts": _ints([u.lease.attempt for u in updates]),
            "progress": _jsonb_array([u.progress for u in updates]),
            "worker": worker_id,
        }

        def write(conn: psycopg.Connection[Any]) -> list[str]:
            return [str(r[0]) for r in conn.execute(q.SET_PROGRESS, params).fetchall()]

        # The lease pool, as heartbeats: a progress report needs no wait for the WAL flush.
        return await self._run(write, lease=True)

    # ---- which processes serve a queue ----

    async def record_process(self, queue: str, process: ProcessInfo, ttl: float) -> None:
        params = process_params(queue, process, ttl)

        def record(conn: psycopg.Connection[Any]) -> None:
            conn.execute(q.RECORD_PROCESS, params)

        # The lease pool, as heartbeats: losing one refresh in a crash costs nothing.
        await self._run(record, lease=True)

    async def remove_process(self, queue: str, process_id: str) -> None:
        params = {"queue": queue, "process_id": process_id}

        def remove(conn: psycopg.Connection[Any]) -> None:
            conn.execute(q.REMOVE_PROCESS, params)

        await self._run(remove)

    async def processes(self, queue: str, now: datetime) -> list[ProcessInfo]:
        params = {"queue": queue, "now": now}

        def read(conn: psycopg.Connection[Any]) -> list[ProcessInfo]:
            return to_processes(conn.execute(q.PROCESSES, params).fetchall())

        return await self._run(read)

    async def prune_processes(self, queue: str, before: datetime) -> int:
        params = {"queue": queue, "before": before}

        def prune(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(q.PRUNE_PROCESSES, params).rowcount

        return await self._run(prune)
