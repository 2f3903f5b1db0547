"""`Client`: kyu-trio for threaded programs (Django, Flask, scripts), with no trio.

Every call runs in the calling thread on a pooled connection (psycopg's
`ConnectionPool`, redis-py's `BlockingConnectionPool`, both thread-safe), so one
`Client` serves all of a program's threads. Waiting for results runs in one thread of
the client's own, started by the first `result()` call (see `kyu_trio._waiters`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import redis
import redis.exceptions

from .._broker._redis import ready_scores, redis_error
from .._config import Config
from .._dsn import redis_address
from .._errors import (
    EnqueueOutcomeUnknown,
    JobNotFound,
    KyuConnectionError,
    KyuError,
    NotConnectedError,
    ServerError,
)
from .._ids import new_job_ids
from .._job import EnqueueRequest, Job
from .._ports import Ready
from .._processes import ProcessInfo
from .._stats import Stats
from .._store._postgres import (
    CONNECT_TIMEOUT,
    PostgresStore,
    _insert_new,
    _tcp_settings,
    insert_in_transaction,
    migrate,
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

T = TypeVar("T")

#: How long a call waits for a free pooled connection before it fails.
POOL_TIMEOUT = 30.0
REDIS_SOCKET_TIMEOUT = 15.0


class Client:
    """A synchronous client: enqueue, inspect and await jobs from any thread.

    It connects on first use (or on entering ``with``); one `Client` is meant to be shared
    by all of a program's threads. Validation, errors and semantics are those of `Queue`.

    Example::

        with Client(Config.from_env()) as client:
            job_id = client.enqueue("send_email", {"to": "a@b.c"})
            print(client.result(job_id, timeout=10))
    """

    def __init__(self, config: Config | None = None) -> None:
        self._config = config if config is not None else Config()
        self._log = self._config.logger
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._redis: redis.Redis | None = None
        # Only for its mapping of psycopg errors to KyuErrors (never opened).
        self._pg = PostgresStore(self._config.dsn)
        self._redis_address = redis_address(self._config.redis_url)
        self._waiting: _Waiting | None = None

    @property
    def config(self) -> Config:
        return self._config

    def __repr__(self) -> str:
        return f"<Client {self._config.queue_name!r}>"

    # ---- connection ------------------------------------------------------------------

    def open(self) -> None:
        """Connect to PostgreSQL (applying migrations, as `Queue.connect` does) and Redis.
        Called by the first method that needs it; safe to call again.

        Example::

            client = Client(config)
            client.open()   # fail at start-up rather than on the first request
        """
        with self._lock:
            if self._pool is not None:
                return
            pool = self._open_postgres()
            try:
                self._redis = self._open_redis()
            except BaseException:
                pool.close()
                raise
            self._pool = pool

    def _open_postgres(self) -> psycopg_pool.ConnectionPool[Any]:
        dsn = self._config.dsn
        settings = _tcp_settings(dsn)
        try:
            # One direct connection first: its error names the real cause, where a pool
            # would only say it timed out.
            with psycopg.connect(
                dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **settings
            ) as conn:
                migrate(conn, f"PostgreSQL at {self._pg._address}")
            kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT}
            if not self._config.synchronous_commit:
                kwargs["options"] = "-c synchronous_commit=off"
            pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                dsn,
                min_size=1,
                max_size=self._config.pool_size,
                open=False,
                kwargs={**kwargs, **settings},
                timeout=POOL_TIMEOUT,
                name="kyu_trio.client",
            )
            pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        except psycopg.Error as exc:
            raise self._pg._connection_error(exc) from None
        return pool

    def _open_redis(self) -> redis.Redis:
        pool = redis.BlockingConnectionPool.from_url(
            self._config.redis_url,
            max_connections=self._config.pool_size,
            timeout=POOL_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            health_check_interval=30,
        )
        client = redis.Redis(connection_pool=pool)
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            client.close()
            error = redis_error(self._redis_address, exc)
            if not isinstance(error, KyuConnectionError):
                error = KyuConnectionError(f"Redis at {self._redis_address} refused us: {error}")
            raise error from None
        return client

    def close(self) -> None:
        """Close the connections and stop waiting (pending `result()` calls raise
        `NotConnectedError`). The client may be opened again.

        Example::

            client.close()
        """
        with self._lock:
            waiting, self._waiting = self._waiting, None
            pool, self._pool = self._pool, None
            client, self._redis = self._redis, None
        if waiting is not None:
            waiting.stop()
        if client is not None:
            client.close()
        if pool is not None:
            pool.close()

    def __enter__(self) -> Client:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connections(self) -> tuple[psycopg_pool.ConnectionPool[Any], redis.Redis]:
        pool, client = self._pool, self._redis
        if pool is None or client is None:
            self.open()
            pool, client = self._pool, self._redis
            if pool is None or client is None:  # closed meanwhile by another thread
                raise NotConnectedError("the client was closed")
        return pool, client

    def _run(self, statement: Statement[T]) -> T:
        pool, _ = self._connections()
        try:
            with pool.connection() as conn:
                rows = conn.execute(statement.sql, statement.params).fetchall()
        except psycopg.Error as exc:
            raise self._pg._error(exc) from None
        return statement.parse(rows)

    def _redis_call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.exceptions.RedisError as exc:
            raise redis_error(self._redis_address, exc) from None

    # ---- producing -------------------------------------------------------------------

    def enqueue(
        self,
        job_type: str,
        payload: Any = None,
        *,
        priority: int = 0,
        max_retries: int = 3,
        scheduled_at: datetime | None = None,
        job_timeout: float | None = None,
        conn: psycopg.Connection[Any] | None = None,
        unique_key: str | None = None,
    ) -> str:
        """Add a job and return its id; it is durable in PostgreSQL when this returns.
        The arguments are those of `Queue.enqueue`; ``conn`` is the caller's
        ``psycopg.Connection``: the job is written in its current transaction (never
        committed here) and runs once the caller commits.

        Example::

            job_id = client.enqueue("send_email", {"to": "a@b.c"}, priority=5)
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
        return self.enqueue_many([request], conn=conn)[0]

    @traced_enqueue
    def enqueue_many(
        self,
        jobs: Iterable[EnqueueRequest | tuple[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[str]:
        """Add many jobs in one statement and one Redis push; return their ids in order.
        One invalid item rejects the call and nothing is written. ``conn``: as for
        `enqueue`, for all the jobs.

        Example::

            ids = client.enqueue_many([("resize", "a.png"), EnqueueRequest("resize", "b.png")])
        """
        now = datetime.now(UTC)
        rows = _core.new_jobs(jobs, self._config, now)
        if not rows:
            return []
        if conn is not None:
            # Through the caller's connection: no pool, no push (the workers push at
            # the caller's COMMIT).
            existing: dict[str, str] = {}
            insert_in_transaction(conn, rows, now, existing)
            return [existing.get(row.id, row.id) for row in rows]
        pool, client = self._connections()
        ids = [row.id for row in rows]
        existing = {}
        try:
            with pool.connection() as conn:
                try:
                    ready = _insert_new(conn, rows, now, existing=existing)
                except psycopg.Error as exc:
                    raise _insert_error(self._pg._error(exc), ids) from None
        except psycopg.Error as exc:  # no connection: nothing was sent
            raise self._pg._error(exc) from None
        self._push(client, ready)
        return [existing.get(i, i) for i in ids]

    def _push(self, client: redis.Redis, ready: list[Ready]) -> None:
        if not ready:
            return
        try:
            client.zadd(self._config.queue_name, ready_scores(ready))
        except redis.exceptions.RedisError as exc:
            # The rows are committed and will run: the workers' sweep pushes what Redis
            # lacks. Raising would invite a duplicate enqueue.
            self._log.warning(
                "could not push %d jobs to Redis (%s); the resync sweep will",
                len(ready),
                redis_error(self._redis_address, exc),
            )

    # ---- looking and fixing ------------------------------------------------------------

    def inspect(self, job_id: str) -> Job:
        """The job with this id, of any queue, with its attempt history. Raises
        `JobNotFound`.

        Example::

            job = client.inspect(job_id)
            print(job.status, job.result)
        """
        job = self._run(_core.get_job(job_id, self._config.max_attempts_kept))
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    def cancel_job(self, job_id: str) -> bool:
        """Cancel a job that has not finished: True if cancelled, False if it had already
        finished. Raises `JobNotFound`. A running job is cancelled wherever it runs, as
        `Queue.cancel_job` says.

        Example::

            if not client.cancel_job(job_id):
                print("too late")
        """
        key = parse_job_id(job_id)
        result = self._run(_core.cancel_job(key, datetime.now(UTC)))
        if not _core.cancelled(key, result):
            return False
        assert result.queue is not None  # a cancelled job's queue
        self._tidy([(key, result.queue)])
        return True

    def cancel_jobs(self, job_ids: Sequence[str]) -> int:
        """`cancel_job` for many jobs (at most 10,000) in one statement: return how many
        were cancelled; unknown or finished ones are ignored. As `Queue.cancel_jobs`.

        Example::

            n = client.cancel_jobs(job_ids)  # e.g. the rows ticked in an admin page
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        cancelled = _core.cancelled_of(self._run(_core.cancel_jobs(ids, datetime.now(UTC))))
        self._tidy(cancelled)
        return len(cancelled)

    def delete_job(self, job_id: str) -> bool:
        """Delete a job that is not running, with its attempt history: True if deleted,
        False if it is running (cancel it first). Raises `JobNotFound`. As
        `Queue.delete_job`.

        Example::

            client.delete_job(job_id)
        """
        key = parse_job_id(job_id)
        deleted = self._run(_core.delete_jobs([key]))
        if not deleted:
            self.inspect(key)  # raises JobNotFound when there is no such job
            return False
        self._tidy(deleted)
        return True

    def delete_jobs(self, job_ids: Sequence[str]) -> int:
        """`delete_job` for many jobs (at most 10,000) in one statement: return how many
        were deleted; running ones are left alone, unknown ids ignored.

        Example::

            n = client.delete_jobs([job.id for job in client.dead_jobs()])
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        deleted = self._run(_core.delete_jobs(ids))
        self._tidy(deleted)
        return len(deleted)

    def _tidy(self, gone: list[tuple[str, str]]) -> None:
        """Jobs (id, queue) cancelled or deleted: take their ids out of Redis (a claim
        refuses them anyway) and wake any result() waiting for them (or their poll will)."""
        if not gone:
            return
        by_queue: dict[str, list[str]] = {}
        for key, queue in gone:
            by_queue.setdefault(queue, []).append(key)
        _, client = self._connections()
        try:
            with client.pipeline(transaction=False) as pipe:
                for queue, keys in by_queue.items():
                    pipe.zrem(queue, *keys)
                    pipe.publish(finished_channel(queue), ",".join(keys))
                pipe.execute()
        except redis.exceptions.RedisError as exc:
            self._log.debug("%d jobs cancelled or deleted; Redis not told (%s)", len(gone), exc)

    def retry_job(self, job_id: str) -> bool:
        """Give a dead or failed job a fresh start: True if retried, False if it is in
        another state. Raises `JobNotFound`.

        Example::

            for job in client.dead_jobs():
                client.retry_job(job.id)
        """
        retried = self._run(_core.retry_job(job_id, datetime.now(UTC)))
        if not retried:
            self.inspect(job_id)  # raises JobNotFound when there is no such job
            return False
        self._push_by_queue(retried)
        return True

    def retry_jobs(self, job_ids: Sequence[str]) -> int:
        """`retry_job` for many jobs (at most 10,000) in one statement: return how many
        dead or failed ones were retried; the others, and unknown ids, are ignored.

        Example::

            n = client.retry_jobs([job.id for job in client.dead_jobs()])
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        retried = self._run(_core.retry_jobs(ids, datetime.now(UTC)))
        self._push_by_queue(retried)
        return len(retried)

    def _push_by_queue(self, retried: list[tuple[Ready, str]]) -> None:
        by_queue: dict[str, list[Ready]] = {}
        for ready, queue in retried:  # a job may be of another queue
            by_queue.setdefault(queue, []).append(ready)
        if not by_queue:
            return
        _, client = self._connections()
        for queue, entries in by_queue.items():
            try:
                client.zadd(queue, ready_scores(entries))
            except redis.exceptions.RedisError as exc:
                self._log.warning(
                    "could not push %d jobs to Redis (%s); the sweep will", len(entries), exc
                )

    def run_cron_now(self, name: str) -> str:
        """Enqueue one job of the periodic job ``name`` now, as recorded, and return its
        id; its schedule goes on as before. Raises `CronEntryNotFound`. As
        `Queue.run_cron_now`.

        Example::

            job_id = client.run_cron_now("nightly_report")
        """
        job_id = new_job_ids(1)[0]
        statement = _core.run_cron_now(
            self._config.queue_name,
            name,
            job_id,
            datetime.now(UTC),
            self._config.default_job_timeout,
        )
        _, client = self._connections()
        self._push(client, [self._run(statement)])
        return job_id

    def processes(self) -> list[ProcessInfo]:
        """The processes serving this queue now, oldest first, ``leader`` marking the one
        that runs its maintenance. As `Queue.processes`.

        Example::

            for p in client.processes():
                print(p.host, p.pid, p.leader)
        """
        return self._run(_core.processes(self._config.queue_name, datetime.now(UTC)))

    def dead_jobs(self, limit: int = 100) -> list[Job]:
        """This queue's dead jobs, newest first; ``limit`` 1 to 1,000,000.

        Example::

            for job in client.dead_jobs():
                print(job.id, job.error_message)
        """
        return self._run(_core.dead_jobs(self._config.queue_name, limit))

    def pause(self) -> None:
        """Pause this queue, fleet-wide: running jobs finish, no job of it starts until
        `resume` (enqueues are still accepted). Stored in PostgreSQL: a restarted worker
        stays paused.

        Example::

            client.pause()
        """
        self._run(_core.set_paused(self._config.queue_name, True, datetime.now(UTC)))

    def resume(self) -> None:
        """Let the queue's jobs start again after `pause`.

        Example::

            client.resume()
        """
        self._run(_core.set_paused(self._config.queue_name, False, datetime.now(UTC)))

    def is_paused(self) -> bool:
        """Whether the queue is paused.

        Example::

            if client.is_paused(): ...
        """
        return self._run(_core.is_paused(self._config.queue_name))

    def stats(self) -> Stats:
        """Counts by status, Redis depth, lag and throughput of the last minute.

        Example::

            print(client.stats().counts)
        """
        now = datetime.now(UTC)
        queue = self._config.queue_name
        counts, oldest, done = _core.stats_statements(queue, now)
        _, client = self._connections()
        depth = int(self._redis_call(client.zcard, queue))
        paused = self._run(_core.is_paused(queue))
        return _core.make_stats(
            queue, self._run(counts), self._run(oldest), self._run(done), depth, now, paused
        )

    # ---- results ---------------------------------------------------------------------

    def result(self, job_id: str, *, timeout: float | None = None) -> Any:
        """Wait until the job has finished and return its handler's return value.

        Raises `JobFailed` (with ``.job``) if it ended dead or cancelled, `JobNotFound`
        for an unknown id, and `TimeoutError` if ``timeout`` seconds pass first (the job
        runs on). Waiting costs no query of its own: see the results how-to.

        Example::

            value = client.result(job_id, timeout=10)
        """
        key = parse_job_id(job_id)
        with self._lock:
            if self._waiting is None:
                self._waiting = _Waiting(self)
            waiting = self._waiting
        return _core.result_of(waiting.wait(key, timeout))

    def _lookup(self, ids: list[str]) -> list[Job]:
        return self._run(_core.get_jobs(ids))


def _insert_error(error: KyuError, ids: list[str]) -> KyuError:
    """An insert's error: a lost connection leaves its outcome unknown (it may have
    committed), an error reply means nothing was written."""
    if isinstance(error, KyuConnectionError) and not isinstance(error, ServerError):
        return EnqueueOutcomeUnknown(
            f"{error} (whether the enqueue of {len(ids)} jobs was written is unknown: check "
            f"job {ids[0]} with inspect() once the server is back)",
            ids,
        )
    return error


class _Waiting:
    """The waiting loop of one `Client`, in a thread of its own: it listens on the
    finished channels of the queues waited on, keeps their waiting keys alive, and looks
    waited jobs up in batches (see `kyu_trio._waiters`)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.hub = WaitHub()
        self._work = threading.Event()
        self._stopped = False
        # Connections of its own: a subscribed one can do nothing else, and the loop must
        # not take one of the pool's from the callers.
        self._redis = redis.Redis.from_url(
            client.config.redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
        )
        self._thread = threading.Thread(target=self._loop, name="kyu-trio-results", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            done = self.hub.fail(self.hub.waited(), NotConnectedError("the client was closed"))
        for waiter in done:
            waiter.wake()
        self._work.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * TICK + 1)

    def wait(self, job_id: str, timeout: float | None) -> Job:
        done = threading.Event()
        waiter = Waiter(job_id, wake=done.set)
        with self._lock:
            if self._stopped:
                raise NotConnectedError("the client was closed")
            self.hub.add(waiter)
        self._work.set()
        if not done.wait(timeout):
            with self._lock:
                self.hub.discard(waiter)
            if not done.is_set():
                raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.job is not None
        return waiter.job

    def _loop(self) -> None:
        pubsub: Any = None
        subscribed: set[str] = set()
        refreshed_at = 0.0
        next_poll = time.monotonic() + POLL_INTERVAL
        try:
            while True:
                with self._lock:
                    if self._stopped:
                        return
                    idle = not self.hub
                    queues = self.hub.queues()
                if idle:
                    self._work.wait()
                    self._work.clear()
                    next_poll = time.monotonic() + POLL_INTERVAL
                    continue
                now = time.monotonic()
                try:
                    pubsub, fresh = self._listen(pubsub, subscribed, queues)
                    if fresh or now - refreshed_at > WAITING_REFRESH:
                        self._keep_waiting(queues)
                        refreshed_at = now
                    if fresh:
                        # A worker may have looked for the key just before we set it: look
                        # again once its answer has expired.
                        next_poll = min(next_poll, now + WAITING_CHECK_INTERVAL + 0.1)
                    ids = self._messages(pubsub) if subscribed else []
                except (KyuError, redis.exceptions.RedisError) as exc:
                    # Only notifications are lost: the poll goes on.
                    self._client._log.warning("waiting for results without Redis: %s", exc)
                    _close_quietly(pubsub)
                    pubsub = None
                    subscribed.clear()
                    ids = []
                # Unsubscribed (Redis away, or nothing to wait for yet): pause a tick, and
                # wake at once for new waiters or close() (never a plain sleep: close()
                # must not wait it out).
                if not subscribed:
                    self._work.wait(TICK)
                    self._work.clear()
                with self._lock:
                    self.hub.notified(ids)
                    if time.monotonic() >= next_poll:
                        self.hub.recheck()
                        next_poll = time.monotonic() + POLL_INTERVAL
                    asked = self.hub.take_unchecked()
                if asked:
                    self._look_up(asked)
        finally:
            _close_quietly(pubsub)
            self._redis.close()

    def _listen(self, pubsub: Any, subscribed: set[str], queues: set[str]) -> tuple[Any, bool]:
        """Subscribe to the finished channels of ``queues`` (only); True if any is new."""
        new = queues - subscribed
        if pubsub is None:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        if new:
            pubsub.subscribe(*(finished_channel(q) for q in new))
            subscribed |= new
        gone = subscribed - queues
        if gone:
            pubsub.unsubscribe(*(finished_channel(q) for q in gone))
            subscribed -= gone
        return pubsub, bool(new)

    def _keep_waiting(self, queues: set[str]) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.set(waiting_key(queue), "1", ex=WAITING_TTL)
            pipe.execute()

    @staticmethod
    def _messages(pubsub: Any) -> list[str]:
        ids: list[str] = []
        message = pubsub.get_message(timeout=TICK)
        while message is not None:
            if message.get("type") == "message":
                ids.extend(parse_finished(message["data"]))
            message = pubsub.get_message(timeout=0)
        return ids

    def _look_up(self, asked: list[str]) -> None:
        try:
            jobs = self._client._lookup(asked)
        except KyuError as exc:
            with self._lock:
                done = self.hub.fail(asked, exc)
        else:
            with self._lock:
                done = self.hub.settle(asked, jobs)
        for waiter in done:
            waiter.wake()


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except redis.exceptions.RedisError as exc:
            logging.getLogger("kyu_trio").debug("closing a pub/sub connection: %s", exc)
