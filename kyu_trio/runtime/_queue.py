"""`Queue`: the public face of kyu-trio."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

import trio

from .._clock import Clock, SystemClock
from .._config import Config, shown
from .._errors import (
    EnqueueOutcomeUnknown,
    InvalidJobError,
    JobNotFound,
    KyuConnectionError,
    KyuError,
    NotConnectedError,
    ServerError,
)
from .._ids import new_job_ids
from .._job import FINAL_STATES, EnqueueRequest, Job, JobStatus
from .._ports import Broker, CancelOutcome, NewJob, Ready, Store
from .._score import PRIORITY_MAX, PRIORITY_MIN
from .._stats import Stats
from .._version import __version__
from ._handlers import Handler, HandlerSpec, Middleware, Registry, handler_kind
from ._http import Response, Route, open_http_listeners, serve_http
from ._metrics import Metrics, Sampler
from ._pool import WorkerPool
from ._reaper import Reaper
from ._scheduler import Scheduler

H = TypeVar("H", bound=Handler)

MAX_JOB_TYPE_LENGTH = 200
MAX_RETRIES_LIMIT = 2**31 - 1
READY_CHECK_LIMIT = 2.0
#: How long enqueue repeats an insert whose answer was lost before it gives up.
ENQUEUE_RETRY_LIMIT = 5.0
#: Longest job_timeout: PostgreSQL interval arithmetic must stay far from overflow.
MAX_JOB_TIMEOUT = 366 * 24 * 3600.0


def _check_limit(limit: object, at_most: int = 1_000_000) -> None:
    # Bounded: past 2**63 PostgreSQL answers NumericValueOutOfRange, and long before that
    # a list would not fit in memory.

    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= at_most:
        raise KyuError(f"limit must be an int from 1 to {at_most}, got {shown(limit)}")


def _crash(exc: BaseException) -> BaseException | None:
    """What serve() should raise for ``exc``: None for a plain cancellation (and for
    KeyboardInterrupt, which is Ctrl-C), the single error when a task group holds just one
    besides cancellations, else the group."""
    if isinstance(exc, trio.Cancelled | KeyboardInterrupt):
        return None
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    _, rest = exc.split(trio.Cancelled)
    if rest is None:
        return None
    leaves: list[BaseException] = []
    stack: list[BaseException] = [rest]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            leaves.append(item)
    return leaves[0] if len(leaves) == 1 else rest


def _parse_id(job_id: object) -> str:
    if not isinstance(job_id, str):
        raise JobNotFound(f"job ids are UUID strings, got {type(job_id).__name__}")
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise JobNotFound(f"no job {job_id[:100]!r}: not a job id (a UUID)") from None


class Queue:
    """A job queue: register handlers, enqueue jobs, and run workers.

    Example::

        queue = Queue(Config(dsn="postgresql://localhost/app", workers=5))

        @queue.handler("send_email")
        async def send_email(payload: str) -> None:
            ...

        async def main() -> None:
            async with queue:
                await queue.enqueue("send_email", '{"to": "a@b.c"}')

        trio.run(queue.serve)

    ``store``, ``broker`` and ``clock`` replace the PostgreSQL and Redis adapters and the
    system clock (tests pass `MemoryStore`, `MemoryBroker` and `TrioClock`).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        store: Store | None = None,
        broker: Broker | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._config = config if config is not None else Config()
        self._given_store = store
        self._given_broker = broker
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._registry = Registry()
        self._store: Store | None = None
        self._broker: Broker | None = None
        self._pool: WorkerPool | None = None
        self._shutdown_requested = False
        #: Unique across processes and restarts: fences this process's writes.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._scheduler: Scheduler | None = None
        self._reaper: Reaper | None = None
        self.metrics = self._new_metrics()
        #: The port the metrics server listens on while `serve()` runs (None otherwise).
        self.metrics_port: int | None = None

    @property
    def config(self) -> Config:
        """The settings. Replace them (e.g. ``attrs.evolve(queue.config, workers=20)``)
        only while the queue is not connected."""
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        if self.connected:
            raise KyuError("close() the queue before changing its config")
        self._config = config
        self.metrics = self._new_metrics()

    def _new_metrics(self) -> Metrics:
        """This queue's Prometheus metrics (``metrics.registry`` is private to it)."""
        return Metrics(self._config.queue_name, __version__, self._registry.handlers.__contains__)

    def __repr__(self) -> str:
        return f"<Queue {self.config.queue_name!r} workers={self.config.workers}>"

    # ---- handlers --------------------------------------------------------------------

    def register(self, job_type: str, fn: Handler, *, asyncio: bool = False) -> None:
        """Run ``fn(payload)`` for jobs of ``job_type``; registering again replaces it.

        ``async def`` handlers run in the worker task, plain ``def`` handlers in a thread,
        and with ``asyncio=True`` an asyncio coroutine function runs through trio-asyncio.

        Example::

            queue.register("resize", resize_image)
            queue.register("fetch", fetch_with_aiohttp, asyncio=True)
        """
        self._check_job_type(job_type)
        self._registry.handlers[job_type] = HandlerSpec(fn, handler_kind(fn, asyncio=asyncio))
        self.metrics.forget_labels()

    def handler(self, job_type: str, *, asyncio: bool = False) -> Callable[[H], H]:
        """Decorator form of `register`.

        Example::

            @queue.handler("send_email")
            async def send_email(payload: str) -> None: ...
        """

        def decorate(fn: H) -> H:
            self.register(job_type, fn, asyncio=asyncio)
            return fn

        return decorate

    def use(self, middleware: Middleware) -> None:
        """Wrap every job in ``middleware(job, call_next)``; the first registered is outermost.

        Example::

            async def log_jobs(job: Job, call_next) -> None:
                print("start", job.job_type)
                await call_next()

            queue.use(log_jobs)
        """
        if not callable(middleware):
            raise TypeError(f"middleware must be callable, got {middleware!r}")
        self._registry.middleware.append(middleware)

    # ---- connection ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._store is not None

    async def connect(self) -> None:
        """Open the PostgreSQL pool (applying migrations) and the Redis connection.

        Raises `KyuConnectionError` naming ``host:port`` when a server is unreachable.
        """
        if self.connected:
            return
        from ..broker._redis import RedisBroker
        from ..store._postgres import PostgresStore

        store = self._given_store or PostgresStore(
            self.config.dsn, self.config.pool_size, self.config.synchronous_commit
        )
        broker = self._given_broker or RedisBroker(self.config.redis_url, self.config.pool_size)
        await store.open()
        try:
            await broker.open()
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.close()
            raise
        self._store, self._broker = store, broker
        log = self.config.logger
        self._scheduler = Scheduler(
            queue=self.config.queue_name, store=store, broker=broker, clock=self._clock,
            interval=self.config.scheduler_interval, logger=log, metrics=self.metrics,
        )
        self._reaper = Reaper(
            queue=self.config.queue_name, store=store, broker=broker, clock=self._clock,
            interval=self.config.reaper_interval, stale_after=self.config.stale_job_timeout,
            logger=log, metrics=self.metrics,
        )

    async def close(self) -> None:
        """Close connections. The queue may `connect()` again later, even in another
        `trio.run`."""
        store, broker = self._store, self._broker
        self._store = self._broker = None
        with trio.CancelScope(shield=True):
            if broker is not None:
                await broker.close()
            if store is not None:
                await store.close()

    async def __aenter__(self) -> Queue:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _connected(self) -> AsyncIterator[tuple[Store, Broker]]:
        """Use the open connection, or open one for the duration of the block."""
        opened = not self.connected
        if opened:
            await self.connect()
        try:
            store, broker = self._require()
            yield store, broker
        finally:
            if opened:
                await self.close()

    def _require(self) -> tuple[Store, Broker]:
        if self._store is None or self._broker is None:
            raise NotConnectedError(
                "the queue is not connected: use `async with queue:` or `await queue.connect()` "
                "first"
            )
        return self._store, self._broker

    # ---- producing -------------------------------------------------------------------

    async def enqueue(
        self,
        job_type: str,
        payload: str,
        *,
        priority: int = 0,
        max_retries: int = 3,
        scheduled_at: datetime | None = None,
        job_timeout: float | None = None,
    ) -> str:
        """Add a job and return its id. It is durable in PostgreSQL when this returns.

        ``priority``: -32768..32767, higher runs first. ``max_retries=N`` allows N+1 runs.
        ``scheduled_at``: an aware datetime (None = now). ``job_timeout``: seconds
        (None = ``Config.default_job_timeout``).

        Example::

            job_id = await queue.enqueue("send_email", '{"to": "a@b.c"}', priority=5)
        """
        ids = await self.enqueue_many([EnqueueRequest(
            job_type, payload, priority=priority, max_retries=max_retries,
            scheduled_at=scheduled_at, job_timeout=job_timeout,
        )])
        return ids[0]

    async def enqueue_many(
        self, jobs: Iterable[EnqueueRequest | tuple[str, str]]
    ) -> list[str]:
        """Add many jobs in one INSERT and one broker push; return their ids in order.

        Every item is validated first: one bad item rejects the call and writes nothing.

        Example::

            ids = await queue.enqueue_many([("resize", "a.png"), EnqueueRequest("resize", "b.png",
                                                                   priority=9)])
        """
        store, broker = self._require()
        now = self._clock.now()
        items = list(jobs)
        new_jobs = [self._validate(item, now, job_id)
                    for item, job_id in zip(items, new_job_ids(len(items)), strict=True)]
        if not new_jobs:
            return []
        queue_name = self.config.queue_name
        push_failed: list[KyuConnectionError] = []

        def push(ready: list[Ready]) -> None:
            # Runs in the store's thread call right after the commit: one thread hop for
            # the whole enqueue instead of two. The rows are committed and will run even
            # if the push fails (the reaper's sweep pushes them once Redis is back), so a
            # failure is logged, not raised: raising would invite a duplicate enqueue.
            try:
                broker.push_blocking(queue_name, ready)
            except KyuConnectionError as exc:
                push_failed.append(exc)

        try:
            ready = await store.insert_jobs(new_jobs, now, after_commit=push)
        except ServerError:
            raise  # an error reply: nothing was written
        except KyuConnectionError as exc:
            ready = await self._insert_again(store, new_jobs, now, push, exc)
        if push_failed:
            self._push_failed(len(ready), push_failed[0])
        self.metrics.jobs_total.inc(len(new_jobs))
        log = self.config.logger
        if log.isEnabledFor(logging.DEBUG):
            for job in new_jobs:
                log.debug(
                    "job %s enqueued as %s (type=%s)", job.id, job.status.value, job.job_type,
                    extra={"job_id": job.id, "job_type": job.job_type, "attempt": 0,
                           "kyu_event": "enqueued"},
                )
        return [j.id for j in new_jobs]

    async def _insert_again(
        self, store: Store, new_jobs: list[NewJob], now: datetime,
        push: Callable[[list[Ready]], None], exc: KyuConnectionError,
    ) -> list[Ready]:
        """The insert failed with its outcome unknown: PostgreSQL may have committed it and
        only the answer been lost. Repeat it with the same ids (which never writes a row
        twice) until it is known, for up to ``ENQUEUE_RETRY_LIMIT`` seconds."""
        ids = [job.id for job in new_jobs]
        delay = 0.05
        with trio.move_on_after(ENQUEUE_RETRY_LIMIT):
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                try:
                    return await store.insert_jobs(new_jobs, now, after_commit=push, again=True)
                except KyuConnectionError as again:
                    exc = again
        listed = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        raise EnqueueOutcomeUnknown(
            f"{exc} (whether the enqueue of {len(ids)} jobs was written is unknown: check "
            f"job {listed} with inspect() once the server is back)", ids,
        ) from None

    def _check_job_type(self, job_type: object) -> str:
        if not isinstance(job_type, str) or not job_type.strip():

            raise InvalidJobError(f"job_type must be a non-empty str, got {shown(job_type, 80)}")
        if len(job_type) > MAX_JOB_TYPE_LENGTH:
            raise InvalidJobError(f"job_type must be at most {MAX_JOB_TYPE_LENGTH} characters")
        # Job types go into log lines, metric labels and terminals: a control character
        # (C0 with NUL, CR and LF, DEL, C1 with NEL) or a line/paragraph separator could
        # forge a log line or a terminal command.
        bad = next((c for c in job_type if c in "\u2028\u2029" or not (
            " " <= c < "\x7f" or c > "\x9f")), None)
        if bad is not None:
            raise InvalidJobError(
                f"job_type must not contain control characters, got {job_type!r:.80} "
                f"(with {bad!r})"
            )
        if not job_type.isascii():
            try:
                job_type.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidJobError("job_type is not valid Unicode (lone surrogates)") from None
        return job_type

    def _validate(
        self, item: EnqueueRequest | tuple[str, str], now: datetime, job_id: str
    ) -> NewJob:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise InvalidJobError("each job is (job_type, payload) or an EnqueueRequest")
            item = EnqueueRequest(*item)
        elif not isinstance(item, EnqueueRequest):
            raise InvalidJobError("each job is (job_type, payload) or an EnqueueRequest")

        job_type = self._check_job_type(item.job_type)
        payload = item.payload
        if not isinstance(payload, str):
            raise InvalidJobError(
                f"payload must be a str (serialise it yourself, e.g. json.dumps), "
                f"got {type(payload).__name__}"
            )
        if "\x00" in payload:
            raise InvalidJobError("payload must not contain NUL characters (PostgreSQL text)")
        try:
            size = len(payload.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidJobError("payload is not valid Unicode (lone surrogates)") from None
        if size > self.config.max_payload_bytes:
            raise InvalidJobError(
                f"payload is {size} bytes, over Config.max_payload_bytes="
                f"{self.config.max_payload_bytes}"
            )
        priority = item.priority
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
            PRIORITY_MIN <= priority <= PRIORITY_MAX
        ):
            raise InvalidJobError(
                f"priority must be an int from {PRIORITY_MIN} to {PRIORITY_MAX}, "
                f"got {shown(priority)}"
            )
        retries = item.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or not (
            0 <= retries <= MAX_RETRIES_LIMIT
        ):
            raise InvalidJobError(
                f"max_retries must be an int from 0 to {MAX_RETRIES_LIMIT}, got {shown(retries)}"
            )
        timeout = item.job_timeout
        if timeout is None:
            timeout = self.config.default_job_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 < timeout <= MAX_JOB_TIMEOUT  # False for NaN; no float() of a huge int
        ):
            raise InvalidJobError(
                f"job_timeout must be a number of seconds > 0 and at most {MAX_JOB_TIMEOUT:g} "
                f"(a year), got {shown(timeout)}"
            )
        due = item.scheduled_at
        if due is None:
            due = now
        elif not isinstance(due, datetime):
            raise InvalidJobError(f"scheduled_at must be a datetime, got {type(due).__name__}")
        elif due.tzinfo is None or due.utcoffset() is None:
            raise InvalidJobError(
                "scheduled_at must be timezone-aware (e.g. datetime.now(timezone.utc))"
            )
        elif not (datetime(1970, 1, 1, tzinfo=due.tzinfo) <= due
                  <= datetime(9999, 1, 1, tzinfo=due.tzinfo)):
            raise InvalidJobError(
                f"scheduled_at {due.isoformat()} is out of range: use a time from 1970-01-01 "
                "to 9999-01-01"
            )
        status = JobStatus.PENDING if due <= now else JobStatus.SCHEDULED
        return NewJob(
            id=job_id, queue=self.config.queue_name, job_type=job_type,
            payload=payload, priority=priority, max_retries=retries, scheduled_at=due,
            job_timeout=float(timeout), status=status,
        )

    # ---- looking and fixing ------------------------------------------------------------

    async def inspect(self, job_id: str) -> Job:
        """The job with this id, of any queue. Raises `JobNotFound`.

        Example::

            job = await queue.inspect(job_id)
            print(job.status, job.error_message)
        """
        key = _parse_id(job_id)
        store, _ = self._require()
        job = await store.get_job(key)
        if job is None:
            raise JobNotFound(f"no job with id {key}")
        return job

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job that has not started: True if cancelled, False if it is running or
        finished. Raises `JobNotFound` when there is no such job.

        Example::

            if not await queue.cancel_job(job_id):
                print("too late: it already ran or is running")
        """
        key = _parse_id(job_id)
        store, broker = self._require()
        result = await store.cancel_job(key, self._clock.now())
        if result.outcome == CancelOutcome.NOT_FOUND:
            raise JobNotFound(f"no job with id {key}")
        if result.outcome == CancelOutcome.CANCELLED and result.queue is not None:
            # Tidy the broker; if this fails the claim refuses the cancelled job anyway.
            with suppress(KyuConnectionError):
                await broker.remove(result.queue, [key])
            return True
        return False

    async def dead_jobs(self, limit: int = 100) -> list[Job]:
        """This queue's dead jobs (no retries left), newest first; ``limit`` 1 to 1,000,000.

        Example::

            for job in await queue.dead_jobs():
                print(job.id, job.error_message)
        """
        _check_limit(limit)
        store, _ = self._require()
        return await store.dead_jobs(self.config.queue_name, limit)

    async def retry_job(self, job_id: str) -> bool:
        """Give a dead or failed job a fresh start: pending now, retry count reset.
        True if it was retried, False if it is in another state. Raises `JobNotFound`.

        Example::

            for job in await queue.dead_jobs():
                await queue.retry_job(job.id)
        """
        key = _parse_id(job_id)
        store, broker = self._require()
        retried = await store.retry_jobs([key], self._clock.now())
        if not retried:
            await self.inspect(key)  # raises JobNotFound when there is no such job
            return False
        for ready, queue_name in retried:
            await self._push_quietly(broker, queue_name, [ready])
        return True

    async def retry_dead_jobs(self, limit: int = 10_000) -> int:
        """Retry up to ``limit`` (at most 1,000,000) dead jobs of this queue (oldest first);
        return how many.

        Example::

            n = await queue.retry_dead_jobs()
        """
        _check_limit(limit)
        store, broker = self._require()
        total = 0
        while total < limit:
            ready = await store.retry_dead(
                self.config.queue_name, self._clock.now(), min(1000, limit - total)
            )
            await self._push_quietly(broker, self.config.queue_name, ready)
            total += len(ready)
            if not ready:
                break
        return total

    async def list_jobs(
        self, *, status: JobStatus | str | None = None, job_type: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """This queue's jobs, newest first, optionally filtered by status and type;
        ``limit`` 1 to 1,000,000.

        Example::

            failed = await queue.list_jobs(status="failed", limit=20)
        """

        _check_limit(limit)
        try:
            wanted = None if status is None else JobStatus(status)
        except ValueError:
            choices = ", ".join(s.value for s in JobStatus)
            raise KyuError(f"unknown status {shown(status)}: use one of {choices}") from None
        # Only what PostgreSQL could not take as text: a filter matching no job is fine.
        if job_type is not None and (
            not isinstance(job_type, str) or "\x00" in job_type
            or any("\ud800" <= c <= "\udfff" for c in job_type)
        ):
            raise KyuError(f"job_type must be a str without NUL or lone surrogates, got "
                           f"{shown(job_type, 80)}")
        store, _ = self._require()
        return await store.list_jobs(self.config.queue_name, wanted, job_type, limit)

    async def stats(self) -> Stats:
        """Counts by status, Redis depth, lag and throughput of the last minute.

        Example::

            s = await queue.stats()
            print(f"{s.completed_last_minute} jobs/min, lag {s.lag_seconds:.1f}s")
        """
        store, broker = self._require()
        now = self._clock.now()
        queue_stats = await store.queue_stats(self.config.queue_name, now)
        depth = await broker.size(self.config.queue_name)
        done = await store.completed_since(self.config.queue_name, now - timedelta(minutes=1))
        lag = 0.0
        if queue_stats.oldest_due is not None:
            lag = max((now - queue_stats.oldest_due).total_seconds(), 0.0)
        return Stats(self.config.queue_name, queue_stats.counts, depth, lag, done)

    async def purge(
        self, older_than: timedelta,
        statuses: Iterable[JobStatus | str] = (JobStatus.COMPLETED, JobStatus.CANCELLED),
    ) -> int:
        """Delete this queue's finished jobs last updated more than ``older_than`` ago,
        in batches; return how many were deleted. Only final states can be purged;
        ``older_than`` is at most 36525 days (100 years).

        Example::

            deleted = await queue.purge(timedelta(days=7))
        """
        longest = timedelta(days=36525)  # now - older_than must stay a valid datetime
        if not isinstance(older_than, timedelta) or not timedelta(0) <= older_than <= longest:
            raise KyuError(
                f"older_than must be a timedelta from 0 to {longest.days} days (100 years)"
            )
        if isinstance(statuses, str | JobStatus):
            statuses = [statuses]
        try:
            wanted = [JobStatus(s) for s in statuses]
        except (ValueError, TypeError):
            wanted = []
        if not wanted or any(s not in FINAL_STATES for s in wanted):
            raise KyuError("only completed, cancelled and dead jobs can be purged")
        store, _ = self._require()
        before = self._clock.now() - older_than
        total = 0
        while n := await store.purge(self.config.queue_name, wanted, before, 5000):
            total += n
        return total

    async def _push_quietly(self, broker: Broker, queue: str, ready: list[Ready]) -> None:
        try:
            await broker.push(queue, ready)
        except KyuConnectionError as exc:
            self._push_failed(len(ready), exc)

    def _push_failed(self, count: int, exc: KyuConnectionError) -> None:
        self.config.logger.warning(
            "could not push %d jobs to Redis (%s); the resync sweep will", count, exc
        )

    # ---- consuming -------------------------------------------------------------------

    def _new_pool(self, store: Store, broker: Broker, *, drain: bool) -> WorkerPool:
        pool = WorkerPool(
            config=self.config, store=store, broker=broker, clock=self._clock,
            registry=self._registry, worker_id=self.worker_id, drain=drain,
            logger=self.config.logger, metrics=self.metrics,
        )
        self.metrics.running.set_function(lambda: pool.running)
        return pool

    @asynccontextmanager
    async def _asyncio_loop(self) -> AsyncIterator[None]:
        if not self._registry.needs_asyncio:
            yield
            return
        import trio_asyncio

        async with trio_asyncio.open_loop():
            yield

    async def run_once(self) -> None:
        """Process what is ready now, then return: one scheduler pass, one reaper pass,
        then every due job with the configured workers. Jobs that fall due later (retries,
        scheduled jobs) are left for the next call.

        Example::

            async with queue:
                await queue.run_once()   # e.g. from a cron job
        """
        async with self._connected() as (store, broker):
            assert self._scheduler is not None and self._reaper is not None
            await self._scheduler.run_once()
            await self._reaper.run_once()
            pool = self._new_pool(store, broker, drain=True)
            async with self._asyncio_loop(), trio.open_nursery() as nursery:
                await nursery.start(pool.run)

    def shutdown(self) -> None:
        """Start a graceful shutdown of `serve()`, as SIGTERM would. Safe to call any time."""
        self._shutdown_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

    _stop_event: trio.Event | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run workers, scheduler and reaper until SIGINT/SIGTERM or `shutdown()`, then stop
        gracefully (``Config.shutdown_grace``) and return. Connects if needed.

        It returns only after a signal, `shutdown()` or cancellation. An unexpected error in
        any of its tasks requeues every job this process holds, is logged with its
        traceback, and is raised (the error itself when it is the only one, else the
        group).

        Example::

            trio.run(queue.serve)
        """
        async with self._metrics_listeners() as listeners, self._connected() as (store, broker):
            assert self._scheduler is not None and self._reaper is not None
            self._pool = pool = self._new_pool(store, broker, drain=False)
            self._stop_event = stop = trio.Event()
            if self._shutdown_requested:
                stop.set()
            try:
                async with self._asyncio_loop(), trio.open_nursery() as nursery:
                    await nursery.start(self._scheduler.run)
                    await nursery.start(self._reaper.run)
                    await nursery.start(self._sampler(store, broker).run)
                    if listeners:
                        self.metrics_port = await nursery.start(partial(
                            serve_http, self.config.metrics_host, self.config.metrics_port,
                            self._routes(store, broker), self.config.logger,
                            listeners=listeners,
                        ))
                    if threading.current_thread() is threading.main_thread():
                        await nursery.start(self._watch_signals, pool)
                    await nursery.start(self._supervise_pool, pool, nursery.cancel_scope)
                    self.config.logger.info(
                        "serving queue %r with %d workers as %s", self.config.queue_name,
                        self.config.workers, self.worker_id,
                    )
                    task_status.started()
                    await stop.wait()
                    await pool.shutdown(self.config.shutdown_grace)
            except BaseException as exc:
                crash = _crash(exc)
                if crash is None:
                    raise
                self.config.logger.critical(
                    "worker %s stopped by an unexpected error; the jobs it held were "
                    "requeued", self.worker_id, exc_info=crash,
                )
                if crash is exc:
                    raise
                raise crash from exc
            finally:
                self._stop_event = None
                self._pool = None
                self._shutdown_requested = False
                self.metrics_port = None

    @asynccontextmanager
    async def _metrics_listeners(self) -> AsyncIterator[list[trio.SocketListener]]:
        """The metrics port, bound before connecting and outside serve()'s nursery: a taken
        port fails at once, as a bare MetricsPortError (the CLI's one line), not as a crash."""
        if not self.config.metrics_port:
            yield []
            return
        listeners = await open_http_listeners(self.config.metrics_host, self.config.metrics_port)
        try:
            yield listeners
        finally:
            for listener in listeners:  # serve_http closes them, unless it never started
                await trio.aclose_forcefully(listener)

    def _sampler(self, store: Store, broker: Broker) -> Sampler:
        return Sampler(
            metrics=self.metrics, queue=self.config.queue_name, store=store, broker=broker,
            clock=self._clock, interval=self.config.metrics_sample_interval,
            logger=self.config.logger,
        )

    def _routes(self, store: Store, broker: Broker) -> dict[str, Route]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def metrics() -> Response:
            return Response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)

        async def healthz() -> Response:
            return Response(200, b"ok\n")

        async def readyz() -> Response:
            problems = []
            for name, check in (("PostgreSQL", store.ping), ("Redis", broker.ping)):
                try:
                    with trio.fail_after(READY_CHECK_LIMIT):
                        await check()
                except KyuConnectionError as exc:
                    problems.append(str(exc))
                except trio.TooSlowError:
                    problems.append(f"{name} did not answer within {READY_CHECK_LIMIT}s")
            if problems:
                return Response(503, ("not ready: " + "; ".join(problems) + "\n").encode())
            return Response(200, b"ready\n")

        return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}

    async def _supervise_pool(
        self, pool: WorkerPool, done: trio.CancelScope,
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            task_status.started()
        if self._stop_event is None or not self._stop_event.is_set():
            # The pool stops only when asked: returning otherwise is a bug, and serve()
            # must not pass it off as a clean stop.
            raise KyuError("the worker pool stopped without being asked to (a kyu-trio bug)")
        # The pool has stopped and recorded every outcome: stop the maintenance tasks.
        done.cancel()

    async def _watch_signals(
        self, pool: WorkerPool, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            seen = 0
            async for signum in signals:
                seen += 1
                if seen == 1:
                    self.config.logger.warning(
                        "%s: finishing running jobs (up to %.0fs; signal again to stop now)",
                        signal.Signals(signum).name, self.config.shutdown_grace,
                    )
                    self.shutdown()
                else:
                    self.config.logger.warning("second signal: requeueing running jobs now")
                    pool.cancel_jobs()

__all__: Sequence[str] = ["Queue"]
