"""`AsyncioClient`: kyu-trio for asyncio programs (FastAPI, Starlette, aiohttp), on the
default loop or uvloop, with no trio.

Its I/O is asyncio's own (psycopg's `AsyncConnectionPool`, `redis.asyncio`), so no call
blocks the event loop; the one blocking step, the schema check at `open()`, runs in a
thread. Waiting for results runs in one task of the client's own, started by the first
`result()` call (see `kyu_trio._waiters`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import redis.asyncio
import redis.exceptions

from .._broker._redis import ready_scores, redis_error
from .._config import Config
from .._dsn import redis_address
from .._errors import JobNotFound, KyuConnectionError, KyuError, NotConnectedError
from .._ids import new_job_ids
from .._job import EnqueueRequest, Job
from .._ports import NewJob, Ready
from .._processes import ProcessInfo
from .._stats import Stats
from .._store import _queries as q
from .._store._postgres import (
    CONNECT_TIMEOUT,
    PostgresStore,
    _tcp_settings,
    caller_address,
    caller_conn_problem,
    copy_row,
    insert_one_params,
    map_error,
    migrate,
    schema_found,
    schema_known,
    schema_missing,
)
from .._tracing import traced_enqueue
from .._validation import check_job_ids, parse_job_id
from .._waiters import (
    POLL_INTERVAL,
    TICK,
    WAITING_CHECK_INTERVAL,
    WAITING_REFRESH,
    WAITING_TTL,
    Waiter,
    WaitHub,
    finished_channel,
    parse_finished,
    waiting_key,
)
from . import _core
from ._core import Statement
from ._sync import POOL_TIMEOUT, REDIS_SOCKET_TIMEOUT, _insert_error

T = TypeVar("T")


class AsyncioClient:
    """An asyncio client: the methods of `Client`, as coroutines.

    It connects on first use (or on entering ``async with``); share one per event loop
    (e.g. one per FastAPI app, opened in its lifespan). It must be used from the loop
    that opened it.

    Example::

        async with AsyncioClient(Config.from_env()) as client:
            job_id = await client.enqueue("send_email", {"to": "a@b.c"})
            print(await client.result(job_id, timeout=10))
    """

    def __init__(self, config: Config | None = None) -> None:
        self._config = config if config is not None else Config()
        self._log = self._config.logger
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._redis: redis.asyncio.Redis | None = None
        self._opening: asyncio.Lock | None = None
        self._pg = PostgresStore(self._config.dsn)  # only for its mapping of errors
        self._redis_address = redis_address(self._config.redis_url)
        self._waiting: _Waiting | None = None

    @property
    def config(self) -> Config:
        return self._config

    def __repr__(self) -> str:
        return f"<AsyncioClient {self._config.queue_name!r}>"

    # ---- connection ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to PostgreSQL (applying migrations) and Redis. Called by the first
        method that needs it; safe to call again.

        Example::

            client = AsyncioClient(config)
            await client.open()
        """
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is not None:
                return
            # The schema check is psycopg's blocking API: in a thread, off the loop.
            await asyncio.to_thread(self._migrate)
            kwargs: dict[str, Any] = {
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT,
                **_tcp_settings(self._config.dsn),
            }
            if not self._config.synchronous_commit:
                kwargs["options"] = "-c synchronous_commit=off"
            pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
                self._config.dsn,
                min_size=1,
                max_size=self._config.pool_size,
                open=False,
                kwargs=kwargs,
                timeout=POOL_TIMEOUT,
                name="kyu_trio.asyncio_client",
            )
            try:
                await pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
                self._redis = await self._open_redis()
            except BaseException as exc:
                await pool.close()
                if isinstance(exc, psycopg.Error):
                    raise self._pg._connection_error(exc) from None
                raise
            self._pool = pool

    def _migrate(self) -> None:
        settings = _tcp_settings(self._config.dsn)
        try:
            with psycopg.connect(
                self._config.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **settings
            ) as conn:
                migrate(conn, f"PostgreSQL at {self._pg._address}")
        except psycopg.Error as exc:
            raise self._pg._connection_error(exc) from None

    async def _open_redis(self) -> redis.asyncio.Redis:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self._config.redis_url,
            max_connections=self._config.pool_size,
            timeout=POOL_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            health_check_interval=30,
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        try:
            await client.ping()
        except redis.exceptions.RedisError as exc:
            await client.aclose()
            error = redis_error(self._redis_address, exc)
            if not isinstance(error, KyuConnectionError):
                error = KyuConnectionError(f"Redis at {self._redis_address} refused us: {error}")
            raise error from None
        return client

    async def aclose(self) -> None:
        """Close the connections and stop waiting (pending `result()` calls raise
        `NotConnectedError`). The client may be opened again.

        Example::

            await client.aclose()
        """
        waiting, self._waiting = self._waiting, None
        pool, self._pool = self._pool, None
        client, self._redis = self._redis, None
        if waiting is not None:
            await waiting.stop()
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.close()

    async def close(self) -> None:
        """`aclose`, under the name `Client` uses."""
        await self.aclose()

    async def __aenter__(self) -> AsyncioClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _connections(
        self,
    ) -> tuple[psycopg_pool.AsyncConnectionPool[Any], redis.asyncio.Redis]:
        if self._pool is None or self._redis is None:
            await self.open()
        pool, client = self._pool, self._redis
        if pool is None or client is None:
            raise NotConnectedError("the client was closed")
        return pool, client

    async def _run(self, statement: Statement[T]) -> T:
        pool, _ = await self._connections()
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(statement.sql, statement.params)
                rows = await cursor.fetchall()
        except psycopg.Error as exc:
            raise self._pg._error(exc) from None
        return statement.parse(rows)

    # ---- producing -------------------------------------------------------------------

    async def enqueue(
        self,
        job_type: str,
        payload: Any = None,
        *,
        priority: int = 0,
        max_retries: int = 3,
        scheduled_at: datetime | None = None,
        job_timeout: float | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
        unique_key: str | None = None,
    ) -> str:
        """Add a job and return its id; it is durable in PostgreSQL when this returns.
        The arguments are those of `Queue.enqueue`; ``conn`` is the caller's
        ``psycopg.AsyncConnection``: the job is written in its current transaction (never
        committed here) and runs once the caller commits.

        Example::

            job_id = await client.enqueue("send_email", {"to": "a@b.c"}, priority=5)
        """
        request = EnqueueRequest(
            job_type,
            payload,
            priority=priority,
            max_retries=max_retries,
            scheduled_at=scheduled_at,
            job_timeout=job_timeout,
            unique_key=unique_key,
        )
        return (await self.enqueue_many([request], conn=conn))[0]

    @traced_enqueue
    async def enqueue_many(
        self,
        jobs: Iterable[EnqueueRequest | tuple[str, Any]],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[str]:
        """Add many jobs in one statement and one Redis push; return their ids in order.
        One invalid item rejects the call and nothing is written. ``conn``: as for
        `enqueue`, for all the jobs.

        Example::

            ids = await client.enqueue_many([("resize", "a.png"), ("resize", "b.png")])
        """
        now = datetime.now(UTC)
        rows = _core.new_jobs(jobs, self._config, now)
        if not rows:
            return []
        if conn is not None:
            # Through the caller's connection: no pool, no push (the workers push at
            # the caller's COMMIT).
            existing: dict[str, str] = {}
            await _insert_in_transaction(conn, rows, now, existing)
            return [existing.get(row.id, row.id) for row in rows]
        pool, client = await self._connections()
        ids = [row.id for row in rows]
        existing = {}
        try:
            async with pool.connection() as conn:
                try:
                    ready = await _insert(conn, rows, now, existing=existing)
                except psycopg.Error as exc:
                    raise _insert_error(self._pg._error(exc), ids) from None
        except psycopg.Error as exc:  # no connection: nothing was sent
            raise self._pg._error(exc) from None
        if ready:
            try:
                await client.zadd(self._config.queue_name, ready_scores(ready))
            except redis.exceptions.RedisError as exc:
                # Committed rows run anyway (the workers' sweep pushes them); raising
                # would invite a duplicate enqueue.
                self._log.warning(
                    "could not push %d jobs to Redis (%s); the resync sweep will",
                    len(ready),
                    redis_error(self._redis_address, exc),
                )
        return [existing.get(i, i) for i in ids]

    # ---- looking and fixing ------------------------------------------------------------

    async def inspect(self, job_id: str) -> Job:
        """The job with this id, of any queue, with its attempt history. Raises
        `JobNotFound`.

        Example::

            job = await client.inspect(job_id)
        """
        job = await self._run(_core.get_job(job_id, self._config.max_attempts_kept))
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job that has not finished: True if cancelled, False if it had already
        finished. Raises `JobNotFound`. A running job is cancelled wherever it runs, as
        `Queue.cancel_job` says.

        Example::

            cancelled = await client.cancel_job(job_id)
        """
        key = parse_job_id(job_id)
        result = await self._run(_core.cancel_job(key, datetime.now(UTC)))
        if not _core.cancelled(key, result):
            return False
        assert result.queue is not None  # a cancelled job's queue
        await self._tidy([(key, result.queue)])
        return True

    async def cancel_jobs(self, job_ids: Sequence[str]) -> int:
        """`cancel_job` for many jobs (at most 10,000) in one statement: return how many
        were cancelled; unknown or finished ones are ignored. As `Queue.cancel_jobs`.

        Example::

            n = await client.cancel_jobs(job_ids)
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        results = await self._run(_core.cancel_jobs(ids, datetime.now(UTC)))
        cancelled = _core.cancelled_of(results)
        await self._tidy(cancelled)
        return len(cancelled)

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job that is not running, with its attempt history: True if deleted,
        False if it is running (cancel it first). Raises `JobNotFound`. As
        `Queue.delete_job`.

        Example::

            await client.delete_job(job_id)
        """
        key = parse_job_id(job_id)
        deleted = await self._run(_core.delete_jobs([key]))
        if not deleted:
            await self.inspect(key)  # raises JobNotFound when there is no such job
            return False
        await self._tidy(deleted)
        return True

    async def delete_jobs(self, job_ids: Sequence[str]) -> int:
        """`delete_job` for many jobs (at most 10,000) in one statement: return how many
        were deleted; running ones are left alone, unknown ids ignored.

        Example::

            n = await client.delete_jobs(job_ids)
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        deleted = await self._run(_core.delete_jobs(ids))
        await self._tidy(deleted)
        return len(deleted)

    async def _tidy(self, gone: list[tuple[str, str]]) -> None:
        """Jobs (id, queue) cancelled or deleted: take their ids out of Redis (a claim
        refuses them anyway) and wake any result() waiting for them (or their poll will)."""
        if not gone:
            return
        by_queue: dict[str, list[str]] = {}
        for key, queue in gone:
            by_queue.setdefault(queue, []).append(key)
        _, client = await self._connections()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for queue, keys in by_queue.items():
                    pipe.zrem(queue, *keys)
                    pipe.publish(finished_channel(queue), ",".join(keys))
                await pipe.execute()
        except redis.exceptions.RedisError as exc:
            self._log.debug("%d jobs cancelled or deleted; Redis not told (%s)", len(gone), exc)

    async def retry_job(self, job_id: str) -> bool:
        """Give a dead or failed job a fresh start: True if retried, False if it is in
        another state. Raises `JobNotFound`.

        Example::

            for job in await client.dead_jobs():
                await client.retry_job(job.id)
        """
        retried = await self._run(_core.retry_job(job_id, datetime.now(UTC)))
        if not retried:
            await self.inspect(job_id)  # raises JobNotFound when there is no such job
            return False
        await self._push_by_queue(retried)
        return True

    async def retry_jobs(self, job_ids: Sequence[str]) -> int:
        """`retry_job` for many jobs (at most 10,000) in one statement: return how many
        dead or failed ones were retried; the others, and unknown ids, are ignored.

        Example::

            n = await client.retry_jobs([job.id for job in await client.dead_jobs()])
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        retried = await self._run(_core.retry_jobs(ids, datetime.now(UTC)))
        await self._push_by_queue(retried)
        return len(retried)

    async def _push_by_queue(self, retried: list[tuple[Ready, str]]) -> None:
        by_queue: dict[str, list[Ready]] = {}
        for ready, queue in retried:  # a job may be of another queue
            by_queue.setdefault(queue, []).append(ready)
        if not by_queue:
            return
        _, client = await self._connections()
        for queue, entries in by_queue.items():
            try:
                await client.zadd(queue, ready_scores(entries))
            except redis.exceptions.RedisError as exc:
                self._log.warning(
                    "could not push %d jobs to Redis (%s); the sweep will", len(entries), exc
                )

    async def run_cron_now(self, name: str) -> str:
        """Enqueue one job of the periodic job ``name`` now, as recorded, and return its
        id; its schedule goes on as before. Raises `CronEntryNotFound`. As
        `Queue.run_cron_now`.

        Example::

            job_id = await client.run_cron_now("nightly_report")
        """
        job_id = new_job_ids(1)[0]
        statement = _core.run_cron_now(
            self._config.queue_name,
            name,
            job_id,
            datetime.now(UTC),
            self._config.default_job_timeout,
        )
        ready = await self._run(statement)
        await self._push_by_queue([(ready, self._config.queue_name)])
        return job_id

    async def processes(self) -> list[ProcessInfo]:
        """The processes serving this queue now, oldest first, ``leader`` marking the one
        that runs its maintenance. As `Queue.processes`.

        Example::

            for p in await client.processes():
                print(p.host, p.pid, p.leader)
        """
        return await self._run(_core.processes(self._config.queue_name, datetime.now(UTC)))

    async def dead_jobs(self, limit: int = 100) -> list[Job]:
        """This queue's dead jobs, newest first; ``limit`` 1 to 1,000,000.

        Example::

            dead = await client.dead_jobs(limit=10)
        """
        return await self._run(_core.dead_jobs(self._config.queue_name, limit))

    async def pause(self) -> None:
        """Pause this queue, fleet-wide: running jobs finish, no job of it starts until
        `resume` (enqueues are still accepted). Stored in PostgreSQL: a restarted worker
        stays paused.

        Example::

            await client.pause()
        """
        await self._run(_core.set_paused(self._config.queue_name, True, datetime.now(UTC)))

    async def resume(self) -> None:
        """Let the queue's jobs start again after `pause`.

        Example::

            await client.resume()
        """
        await self._run(_core.set_paused(self._config.queue_name, False, datetime.now(UTC)))

    async def is_paused(self) -> bool:
        """Whether the queue is paused.

        Example::

            if await client.is_paused(): ...
        """
        return await self._run(_core.is_paused(self._config.queue_name))

    async def stats(self) -> Stats:
        """Counts by status, Redis depth, lag and throughput of the last minute.

        Example::

            stats = await client.stats()
        """
        now = datetime.now(UTC)
        queue = self._config.queue_name
        counts, oldest, done = _core.stats_statements(queue, now)
        _, client = await self._connections()
        try:
            depth = int(await client.zcard(queue))
        except redis.exceptions.RedisError as exc:
            raise redis_error(self._redis_address, exc) from None
        paused = await self._run(_core.is_paused(queue))
        return _core.make_stats(
            queue, await self._run(counts), await self._run(oldest), await self._run(done),
            depth, now, paused,
        )  # fmt: skip

    # ---- results ---------------------------------------------------------------------

    # The issue pins ``timeout=`` (as Client has it), where asyncio style is a timeout
    # around the call: both work.
    async def result(self, job_id: str, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait until the job has finished and return its handler's return value.

        Raises `JobFailed` (with ``.job``) if it ended dead or cancelled, `JobNotFound`
        for an unknown id, and `TimeoutError` if ``timeout`` seconds pass first (the job
        runs on). Cancelling the call only stops the wait.

        Example::

            value = await client.result(job_id, timeout=10)
        """
        key = parse_job_id(job_id)
        await self._connections()
        if self._waiting is None:
            self._waiting = _Waiting(self)
        return _core.result_of(await self._waiting.wait(key, timeout))

    async def _lookup(self, ids: list[str]) -> list[Job]:
        return await self._run(_core.get_jobs(ids))


async def _insert_in_transaction(
    conn: psycopg.AsyncConnection[Any],
    jobs: list[NewJob],
    now: datetime,
    existing: dict[str, str],
) -> None:
    """What `insert_in_transaction` does, through the caller's asyncio connection."""
    problem = caller_conn_problem(conn, psycopg.AsyncConnection)
    if problem is not None:
        raise problem
    try:
        if not schema_known(conn):
            cursor = await conn.execute(q.SCHEMA_READY)
            row = await cursor.fetchone()
            if not (row and row[0]):
                raise schema_missing(conn)
            schema_found(conn)
        await _insert(conn, jobs, now, notify=True, existing=existing)
    except psycopg.Error as exc:
        raise map_error(exc, caller_address(conn)) from None


async def _insert(
    conn: psycopg.AsyncConnection[Any],
    jobs: list[NewJob],
    now: datetime,
    *,
    notify: bool = False,
    existing: dict[str, str],
) -> list[Ready]:
    """What `_insert_new` does, through an asyncio connection: one INSERT for one job,
    sequence numbers then one COPY for many, and for jobs with a `unique_key`, what
    `_insert_keyed` does, in one transaction (a savepoint in the caller's)."""
    if any(job.unique_key is not None for job in jobs):
        async with conn.transaction():
            ready = await _insert_plain(
                conn, [j for j in jobs if j.unique_key is None], now, notify
            )
            for job in jobs:
                if job.unique_key is not None:
                    ready.extend(await _insert_keyed(conn, job, now, notify, existing))
        return ready
    return await _insert_plain(conn, jobs, now, notify)


async def _insert_keyed(
    conn: psycopg.AsyncConnection[Any],
    job: NewJob,
    now: datetime,
    notify: bool,
    existing: dict[str, str],
) -> list[Ready]:
    params = insert_one_params(job, now, notify=notify)
    while True:
        cursor = await conn.execute(q.INSERT_UNIQUE, params)
        row = await cursor.fetchone()
        if row is not None:
            return _core.pending([job], [row[0]])
        cursor = await conn.execute(q.UNIQUE_HOLDER, params)
        holder = await cursor.fetchone()
        if holder is not None:
            existing[job.id] = holder[0]
            return []
        # The holder finished between the two statements: the key is free again.


async def _insert_plain(
    conn: psycopg.AsyncConnection[Any], jobs: list[NewJob], now: datetime, notify: bool
) -> list[Ready]:
    if not jobs:
        return []
    if len(jobs) == 1:
        params = insert_one_params(jobs[0], now, notify=notify)
        cursor = await conn.execute(q.INSERT_ONE, params)
        row = await cursor.fetchone()
        assert row is not None
        return _core.pending(jobs, [row[0]])
    cursor = await conn.execute(q.NEXT_SEQS, (len(jobs),))
    seqs = sorted(r[0] for r in await cursor.fetchall())
    async with conn.cursor().copy(q.COPY_JOBS) as copy:
        for job, seq in zip(jobs, seqs, strict=True):
            await copy.write_row(copy_row(job, seq, now, notify=notify))
    return _core.pending(jobs, seqs)


class _Waiting:
    """The waiting loop of one `AsyncioClient`, as one task (see `kyu_trio._waiters`)."""

    def __init__(self, client: AsyncioClient) -> None:
        self._client = client
        self.hub = WaitHub()
        self._work = asyncio.Event()
        self._redis = redis.asyncio.Redis.from_url(
            client.config.redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
        )
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="kyu-trio-results")

    async def stop(self) -> None:
        for waiter in self.hub.fail(self.hub.waited(), NotConnectedError("the client was closed")):
            waiter.wake()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._redis.aclose()

    async def wait(self, job_id: str, limit: float | None) -> Job:
        done = asyncio.Event()
        waiter = Waiter(job_id, wake=done.set)
        self.hub.add(waiter)
        self._work.set()
        try:
            async with asyncio.timeout(limit):
                await done.wait()
        except TimeoutError:
            raise TimeoutError(f"job {job_id} did not finish within {limit}s") from None
        finally:
            if not done.is_set():
                self.hub.discard(waiter)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.job is not None
        return waiter.job

    async def _loop(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        subscribed: set[str] = set()
        refreshed_at = 0.0
        next_poll = time.monotonic() + POLL_INTERVAL
        try:
            while True:
                if not self.hub:
                    self._work.clear()
                    await self._work.wait()
                    next_poll = time.monotonic() + POLL_INTERVAL
                    continue
                queues = self.hub.queues()
                now = time.monotonic()
                ids: list[str] = []
                try:
                    new = queues - subscribed
                    if new:
                        await pubsub.subscribe(*(finished_channel(q) for q in new))
                        subscribed |= new
                        # A worker may have looked for the key just before we set it:
                        # look again once its answer has expired.
                        next_poll = min(next_poll, now + WAITING_CHECK_INTERVAL + 0.1)
                    gone = subscribed - queues
                    if gone:
                        await pubsub.unsubscribe(*(finished_channel(q) for q in gone))
                        subscribed -= gone
                    if new or now - refreshed_at > WAITING_REFRESH:
                        async with self._redis.pipeline(transaction=False) as pipe:
                            for queue in queues:
                                pipe.set(waiting_key(queue), "1", ex=WAITING_TTL)
                            await pipe.execute()
                        refreshed_at = now
                    if subscribed:
                        ids = await _messages(pubsub)
                except redis.exceptions.RedisError as exc:
                    # Only notifications are lost: the poll goes on.
                    self._client._log.warning("waiting for results without Redis: %s", exc)
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    subscribed.clear()
                if not subscribed:
                    self._work.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(TICK):
                            await self._work.wait()
                self.hub.notified(ids)
                if time.monotonic() >= next_poll:
                    self.hub.recheck()
                    next_poll = time.monotonic() + POLL_INTERVAL
                asked = self.hub.take_unchecked()
                if asked:
                    await self._look_up(asked)
        finally:
            await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]

    async def _look_up(self, asked: list[str]) -> None:
        try:
            jobs = await self._client._lookup(asked)
        except KyuError as exc:
            done = self.hub.fail(asked, exc)
        else:
            done = self.hub.settle(asked, jobs)
        for waiter in done:
            waiter.wake()


async def _messages(pubsub: Any) -> list[str]:
    ids: list[str] = []
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TICK)
    while message is not None:
        if message.get("type") == "message":
            ids.extend(parse_finished(message["data"]))
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
    return ids
