"""`Queue`: the public face of kyu-trio. It validates what callers hand it (see
`kyu_trio._validation`) and delegates: producing to `_enqueue`, running to `_serve`."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .._clock import Clock, SystemClock
from .._config import Config
from .._cron import CronState, entry_not_found, new_cron_entry
from .._errors import ConfigError, JobNotFound, KyuConnectionError, KyuError, NotConnectedError
from .._ids import new_job_ids
from .._job import FINAL_STATES, EnqueueRequest, Job, JobStatus
from .._limits import check_job_limits
from .._ports import Broker, CancelOutcome, Ready, Store
from .._processes import ProcessInfo
from .._snooze import Backoff, check_backoff, check_max_snoozes
from .._stats import Stats
from .._tracing import traced_enqueue
from .._validation import (
    check_age,
    check_final_statuses,
    check_job_ids,
    check_job_type,
    check_job_type_filter,
    check_limit,
    check_status,
    parse_job_id,
    validate_request,
)
from .._version import __version__
from .._waiters import POLL_INTERVAL, result_of
from ._enqueue import insert_and_push, insert_in_transaction
from ._handlers import Handler, HandlerSpec, Middleware, Registry, handler_kind
from ._metrics import Metrics
from ._serve import Runtime, Serving, metrics_listeners
from ._service import Context
from ._summary import RunSummary

if TYPE_CHECKING:
    import psycopg

H = TypeVar("H", bound=Handler)


class Queue:
    """A job queue: register handlers, enqueue jobs, and run workers.

    Example::

        queue = Queue(Config(dsn="postgresql://localhost/app", workers=5))

        @queue.handler("send_email")
        async def send_email(payload: dict[str, str]) -> str:
            ...
            return "sent"

        async def main() -> None:
            async with queue:
                await queue.enqueue("send_email", {"to": "a@b.c"})

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
        self._runtime: Runtime | None = None
        self._serving: Serving | None = None
        self._shutdown_requested = False
        #: Unique across processes and restarts: fences this process's writes.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.metrics = self._new_metrics()

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

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics server listens on while `serve()` runs (None otherwise)."""
        return None if self._serving is None else self._serving.metrics_port

    def __repr__(self) -> str:
        return f"<Queue {self.config.queue_name!r} workers={self.config.workers}>"

    # ---- handlers --------------------------------------------------------------------

    def register(
        self,
        job_type: str,
        fn: Handler,
        *,
        asyncio: bool = False,
        max_snoozes: int | None = None,
        backoff: Backoff | None = None,
        concurrency: int | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> None:
        """Run ``fn(payload)`` for jobs of ``job_type``; registering again replaces it.

        ``async def`` handlers run in the worker task, plain ``def`` handlers in a thread,
        and with ``asyncio=True`` an asyncio coroutine function runs through trio-asyncio.

        ``max_snoozes`` caps how many times a job may `Snooze` (None: unlimited; counted
        in the job's kept attempt history, so it must be below `Config.max_attempts_kept`).
        ``backoff(attempt) -> seconds`` replaces the queue's exponential retry policy for
        this job type: ``attempt`` counts the job's failures, this one included.

        ``concurrency=n``: at most ``n`` jobs of this type run at once, across every
        process serving the queue. ``rate_limit=(count, per_seconds)``: at most ``count``
        of them start in any window of ``per_seconds`` (a sliding window), fleet-wide.
        Jobs over a limit wait without spending a retry, and other types run past them.
        Register the same limits in every process: a serving process records its own.

        Example::

            queue.register("resize", resize_image)
            queue.register("fetch", fetch_with_aiohttp, asyncio=True)
            queue.register("sync", sync_crm, backoff=lambda attempt: 10.0 * attempt)
            queue.register("call_api", call_api, concurrency=5, rate_limit=(10, 1.0))
        """
        check_job_type(job_type)
        max_snoozes = check_max_snoozes(max_snoozes)
        if max_snoozes is not None and max_snoozes >= self.config.max_attempts_kept:
            raise ConfigError(
                f"max_snoozes={max_snoozes} must be below Config.max_attempts_kept="
                f"{self.config.max_attempts_kept}: snoozes are counted in the kept attempt "
                "history; raise max_attempts_kept or lower max_snoozes"
            )
        self._registry.handlers[job_type] = HandlerSpec(
            fn,
            handler_kind(fn, asyncio=asyncio),
            max_snoozes=max_snoozes,
            backoff=check_backoff(backoff),
            limit=check_job_limits(concurrency, rate_limit),
        )
        self.metrics.forget_labels()

    def handler(
        self,
        job_type: str,
        *,
        asyncio: bool = False,
        max_snoozes: int | None = None,
        backoff: Backoff | None = None,
        concurrency: int | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> Callable[[H], H]:
        """Decorator form of `register`.

        Example::

            @queue.handler("send_email", backoff=lambda attempt: 60.0)
            async def send_email(payload: str) -> None: ...
        """

        def decorate(fn: H) -> H:
            self.register(
                job_type,
                fn,
                asyncio=asyncio,
                max_snoozes=max_snoozes,
                backoff=backoff,
                concurrency=concurrency,
                rate_limit=rate_limit,
            )
            return fn

        return decorate

    # ---- periodic jobs (cron) -----------------------------------------------------------

    def cron(
        self,
        schedule: str,
        job_type: str,
        payload: Any = None,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        priority: int = 0,
        max_retries: int = 3,
        job_timeout: float | None = None,
        missed: str = "run_once",
    ) -> None:
        """Enqueue a ``job_type`` job with ``payload`` at every tick of ``schedule``, while
        at least one process serves the queue: one job per tick, however many serve it.

        ``schedule``: 5 cron fields (minute hour day-of-month month day-of-week), 6 with
        the second first (``"*/10 * * * * *"``), or ``@hourly``, ``@daily``, ... Ticks
        follow ``timezone`` (an IANA name), daylight-saving changes included. ``name``
        (default: ``job_type``) identifies the entry; two entries of one queue may not
        share one. ``missed``: a tick that fell while no process served the queue runs
        once when serving resumes (``"run_once"``), or not at all if found more than a
        minute late (``"skip"``); earlier missed ticks never run. The other arguments
        are `enqueue`'s. Register the same entries in every process: the maintenance
        leader's are the ones that fire.

        Example::

            queue.cron("0 3 * * *", "nightly_report", {"full": True}, timezone="Europe/Paris")
            queue.cron("*/5 * * * *", "sync_crm", name="sync-crm-every-5-min")
        """
        entry = new_cron_entry(
            schedule,
            job_type,
            payload,
            name=name,
            timezone=timezone,
            priority=priority,
            max_retries=max_retries,
            job_timeout=job_timeout,
            missed=missed,
            max_payload_bytes=self.config.max_payload_bytes,
        )
        self._registry.register_cron(entry)

    def periodic(
        self,
        schedule: str,
        job_type: str,
        payload: Any = None,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        priority: int = 0,
        max_retries: int = 3,
        job_timeout: float | None = None,
        missed: str = "run_once",
        asyncio: bool = False,
        max_snoozes: int | None = None,
        backoff: Backoff | None = None,
    ) -> Callable[[H], H]:
        """Decorator: register the function as the handler of ``job_type`` (as `handler`)
        and run it on ``schedule`` (as `cron`, with the same arguments).

        Example::

            @queue.periodic("0 * * * *", "hourly_cleanup")
            async def hourly_cleanup(payload: None) -> None: ...
        """
        entry = new_cron_entry(
            schedule,
            job_type,
            payload,
            name=name,
            timezone=timezone,
            priority=priority,
            max_retries=max_retries,
            job_timeout=job_timeout,
            missed=missed,
            max_payload_bytes=self.config.max_payload_bytes,
        )

        def decorate(fn: H) -> H:
            self.register(job_type, fn, asyncio=asyncio, max_snoozes=max_snoozes, backoff=backoff)
            self._registry.register_cron(entry)
            return fn

        return decorate

    async def cron_entries(self) -> list[CronState]:
        """This queue's periodic jobs as the database records them (name, schedule,
        timezone, job type, last tick, whether the leader registers them), by name; what
        ``kyu-trio cron`` lists.

        Example::

            for state in await queue.cron_entries():
                print(state.name, state.last_tick, state.next_run(datetime.now(UTC)))
        """
        return await self._context().store.cron_states(self.config.queue_name)

    async def run_cron_now(self, name: str) -> str:
        """Enqueue one job of the periodic job ``name`` now, as the database records it
        (its job type, payload, priority, max_retries, and job_timeout or
        ``Config.default_job_timeout``), and return its id. Its schedule goes on as
        before: the last tick is not touched, and the next tick fires as it would have.
        Raises `CronEntryNotFound` if the queue has no entry of that name recorded
        (``kyu-trio cron`` lists them); an entry no longer registered runs too.

        Example::

            job_id = await queue.run_cron_now("nightly_report")
        """
        ctx = self._context()
        if not isinstance(name, str):
            raise entry_not_found(ctx.queue, name)
        job_id = new_job_ids(1)[0]
        ready = await ctx.store.run_cron_now(
            ctx.queue, name, job_id, self._clock.now(), self.config.default_job_timeout
        )
        if ready is None:
            raise entry_not_found(ctx.queue, name)
        await ctx.push_or_log([ready])
        ctx.metrics.jobs_total.inc()
        ctx.log.info(
            "cron entry %r of %r: job %s enqueued now, by hand",
            name,
            ctx.queue,
            job_id,
            extra={"kyu_event": "cron_enqueued", "cron": name, "job_id": job_id},
        )
        return job_id

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
        return self._runtime is not None

    async def connect(self) -> None:
        """Open the PostgreSQL pool (applying migrations) and the Redis connection.

        Raises `KyuConnectionError` naming ``host:port`` when a server is unreachable.
        """
        if self.connected:
            return
        from .._broker._redis import RedisBroker
        from .._store._postgres import PostgresStore

        config = self.config
        store = self._given_store or PostgresStore(
            config.dsn,
            config.pool_size,
            config.synchronous_commit,
            attempts_kept=config.max_attempts_kept,
        )
        broker = self._given_broker or RedisBroker(config.redis_url, config.pool_size)
        await store.open()
        try:
            await broker.open()
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.close()
            raise
        context = Context(
            queue=config.queue_name,
            store=store,
            broker=broker,
            clock=self._clock,
            log=config.logger,
            metrics=self.metrics,
        )
        self._runtime = Runtime(context, config, self._registry, self.worker_id)

    async def aclose(self) -> None:
        """Close connections. The queue may `connect()` again later, even in another
        `trio.run`.

        Example::

            await queue.aclose()
        """
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            with trio.CancelScope(shield=True):
                await runtime.context.broker.close()
                await runtime.context.store.close()

    async def close(self) -> None:
        """`aclose`, under the name kyu-trio first used."""
        await self.aclose()

    async def __aenter__(self) -> Queue:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @asynccontextmanager
    async def _connected(self) -> AsyncIterator[Runtime]:
        """Use the open connection, or open one for the duration of the block."""
        opened = not self.connected
        if opened:
            await self.connect()
        try:
            yield self._require()
        finally:
            if opened:
                await self.aclose()

    def _require(self) -> Runtime:
        if self._runtime is None:
            raise NotConnectedError(
                "the queue is not connected: use `async with queue:` or `await queue.connect()` "
                "first"
            )
        return self._runtime

    def _context(self) -> Context:
        return self._require().context

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
        conn: psycopg.Connection[Any] | None = None,
        unique_key: str | None = None,
    ) -> str:
        """Add a job and return its id. It is durable in PostgreSQL when this returns
        (with ``conn``: when the caller commits).

        ``payload``: any JSON value (dict, list, str, int, float, bool, None); the handler
        gets what ``json.loads(json.dumps(payload))`` gives. ``priority``: -32768..32767,
        higher runs first. ``max_retries=N`` allows N+1 runs. ``scheduled_at``: an aware
        datetime (None = now). ``job_timeout``: seconds
        (None = ``Config.default_job_timeout``). ``conn``: the caller's
        ``psycopg.Connection``: the job is written inside its current transaction, never
        committed by kyu-trio; it runs once the caller commits, never if they roll back.
        ``unique_key``: while an unfinished job (pending, scheduled, running, failed) of
        this queue holds the same key, nothing is written and that job's id is returned.

        Example::

            job_id = await queue.enqueue("send_email", {"to": "a@b.c"}, priority=5)
        """
        ids = await self.enqueue_many(
            [
                EnqueueRequest(
                    job_type,
                    payload,
                    priority=priority,
                    max_retries=max_retries,
                    scheduled_at=scheduled_at,
                    job_timeout=job_timeout,
                    unique_key=unique_key,
                )
            ],
            conn=conn,
        )
        return ids[0]

    @traced_enqueue
    async def enqueue_many(
        self,
        jobs: Iterable[EnqueueRequest | tuple[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[str]:
        """Add many jobs in one INSERT and one broker push; return their ids in order.

        Every item is validated first: one bad item rejects the call and writes nothing.
        ``conn``: as for `enqueue`, for all the jobs. A `unique_key` applies per item (a
        key repeated in one call yields one job, whose id each of its items gets).

        Example::

            ids = await queue.enqueue_many(
                [("resize", "a.png"), EnqueueRequest("resize", {"path": "b.png"}, priority=9)]
            )
        """
        ctx = self._context()
        now = self._clock.now()
        items = list(jobs)
        new_jobs = [
            validate_request(item, config=self.config, now=now, job_id=job_id)
            for item, job_id in zip(items, new_job_ids(len(items)), strict=True)
        ]
        if not new_jobs:
            return []
        if conn is not None:
            return await insert_in_transaction(ctx, conn, new_jobs, now)
        return await insert_and_push(ctx, new_jobs, now)

    # ---- looking and fixing ------------------------------------------------------------

    async def inspect(self, job_id: str) -> Job:
        """The job with this id, of any queue. Raises `JobNotFound`.

        Example::

            job = await queue.inspect(job_id)
            print(job.status, job.error_message)
        """
        key = parse_job_id(job_id)
        job = await self._context().store.get_job(key)
        if job is None:
            raise JobNotFound(f"no job with id {key}")
        return job

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job that has not finished: True if cancelled, False if it had already
        finished (completed, dead or cancelled). Raises `JobNotFound` when there is no
        such job.

        A running job is cancelled wherever it runs: its handler's cancel scope is
        cancelled on the process that holds it (usually within milliseconds; a lost
        notification is caught by that process's next heartbeat), its ``finally`` blocks
        run, and it is recorded ``cancelled`` (attempt outcome ``cancelled``), never
        retried. A plain ``def`` handler's thread cannot be interrupted: the job is still
        recorded cancelled and the thread is abandoned. See docs/how-to/cancellation.md.

        Example::

            if not await queue.cancel_job(job_id):
                print("too late: it already finished")
        """
        key = parse_job_id(job_id)
        ctx = self._context()
        result = await ctx.store.cancel_job(key, self._clock.now())
        if result.outcome == CancelOutcome.NOT_FOUND:
            raise JobNotFound(f"no job with id {key}")
        if result.outcome == CancelOutcome.CANCELLED and result.queue is not None:
            await self._tidy([(key, result.queue)])
            return True
        return False

    async def cancel_jobs(self, job_ids: Sequence[str]) -> int:
        """`cancel_job` for many jobs (at most 10,000) in one statement: return how many
        were cancelled. Ids of unknown or finished jobs are ignored. Running ones are
        cancelled wherever they run, as `cancel_job` says.

        Example::

            scheduled = await queue.list_jobs(status="scheduled")
            n = await queue.cancel_jobs([job.id for job in scheduled])
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        ctx = self._context()
        results = await ctx.store.cancel_jobs(ids, self._clock.now())
        cancelled = [
            (job_id, result.queue)
            for job_id, result in results.items()
            if result.outcome == CancelOutcome.CANCELLED and result.queue is not None
        ]
        await self._tidy(cancelled)
        return len(cancelled)

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job that is not running, whatever its state, with its attempt history:
        True if deleted, False if it is running (`cancel_job` it first, then delete it).
        Raises `JobNotFound` when there is no such job. Jobs of other queues too.

        Example::

            if not await queue.delete_job(job_id):
                await queue.cancel_job(job_id)
                await queue.delete_job(job_id)
        """
        key = parse_job_id(job_id)
        deleted = await self._context().store.delete_jobs([key])
        if not deleted:
            await self.inspect(key)  # raises JobNotFound when there is no such job
            return False
        await self._tidy(deleted)
        return True

    async def delete_jobs(self, job_ids: Sequence[str]) -> int:
        """`delete_job` for many jobs (at most 10,000) in one statement: return how many
        were deleted. Running jobs are left alone; unknown ids are ignored.

        Example::

            n = await queue.delete_jobs([job.id for job in await queue.dead_jobs()])
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        deleted = await self._context().store.delete_jobs(ids)
        await self._tidy(deleted)
        return len(deleted)

    async def _tidy(self, gone: Sequence[tuple[str, str]]) -> None:
        """Jobs (id, queue) just cancelled or deleted: take their ids out of the broker (if
        this fails, the claim refuses them anyway) and wake whoever awaits their results
        (if this fails, their poll will)."""
        by_queue: dict[str, list[str]] = {}
        for job_id, queue_name in gone:
            by_queue.setdefault(queue_name, []).append(job_id)
        ctx = self._context()
        for queue_name, ids in by_queue.items():
            with suppress(KyuConnectionError):
                await ctx.broker.remove(queue_name, ids)
                await ctx.broker.publish_finished(queue_name, ids)

    async def result(self, job_id: str) -> Any:
        """Wait until the job has finished and return its handler's return value.

        Raises `JobFailed` (with ``.job``) if it ended dead or cancelled, and `JobNotFound`
        for an unknown id. No timeout argument: wrap the call in `trio.fail_after` (the job
        runs on). Each call waits on its own notification connection; many waiters in one
        process are cheaper through `Client` or `AsyncioClient`.

        Example::

            with trio.fail_after(10):
                value = await queue.result(job_id)
        """
        key = parse_job_id(job_id)
        ctx = self._context()
        while True:
            job = await ctx.store.get_job(key)
            if job is None:
                raise JobNotFound(f"no job with id {key}")
            if job.status in FINAL_STATES:
                return result_of(job)
            # Woken by the worker's notification, or after POLL_INTERVAL in case it was
            # missed (the job may also have finished before we listened).
            try:
                await ctx.broker.wait_finished(job.queue, [key], POLL_INTERVAL)
            except KyuConnectionError:
                await trio.sleep(POLL_INTERVAL)  # without Redis: poll

    async def dead_jobs(self, limit: int = 100) -> list[Job]:
        """This queue's dead jobs (no retries left), newest first; ``limit`` 1 to 1,000,000.

        Example::

            for job in await queue.dead_jobs():
                print(job.id, job.error_message)
        """
        check_limit(limit)
        return await self._context().store.dead_jobs(self.config.queue_name, limit)

    async def retry_job(self, job_id: str) -> bool:
        """Give a dead or failed job a fresh start: pending now, retry count reset.
        True if it was retried, False if it is in another state. Raises `JobNotFound`.

        Example::

            for job in await queue.dead_jobs():
                await queue.retry_job(job.id)
        """
        key = parse_job_id(job_id)
        retried = await self._context().store.retry_jobs([key], self._clock.now())
        if not retried:
            await self.inspect(key)  # raises JobNotFound when there is no such job
            return False
        await self._push_retried(retried)
        return True

    async def retry_jobs(self, job_ids: Sequence[str]) -> int:
        """`retry_job` for many jobs (at most 10,000) in one statement: the dead and failed
        ones among them start afresh (pending now, retry count reset); return how many.
        Ids of unknown jobs, or of jobs in other states, are ignored.

        Example::

            failed = await queue.list_jobs(status="failed")
            n = await queue.retry_jobs([job.id for job in failed])
        """
        ids = check_job_ids(job_ids)
        if not ids:
            return 0
        retried = await self._context().store.retry_jobs(ids, self._clock.now())
        await self._push_retried(retried)
        return len(retried)

    async def _push_retried(self, retried: Sequence[tuple[Ready, str]]) -> None:
        by_queue: dict[str, list[Ready]] = {}
        for ready, queue_name in retried:  # a job may be of another queue
            by_queue.setdefault(queue_name, []).append(ready)
        ctx = self._context()
        for queue_name, entries in by_queue.items():
            await ctx.push_or_log(entries, queue_name)

    async def retry_dead_jobs(self, limit: int = 10_000) -> int:
        """Retry up to ``limit`` (at most 1,000,000) dead jobs of this queue (oldest first);
        return how many.

        Example::

            n = await queue.retry_dead_jobs()
        """
        check_limit(limit)
        ctx = self._context()
        total = 0
        while total < limit:
            ready = await ctx.store.retry_dead(
                ctx.queue, self._clock.now(), min(1000, limit - total)
            )
            await ctx.push_or_log(ready)
            total += len(ready)
            if not ready:
                break
        return total

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """This queue's jobs, newest first, optionally filtered by status and type;
        ``limit`` 1 to 1,000,000.

        Example::

            failed = await queue.list_jobs(status="failed", limit=20)
        """
        check_limit(limit)
        wanted, of_type = check_status(status), check_job_type_filter(job_type)
        return await self._context().store.list_jobs(self.config.queue_name, wanted, of_type, limit)

    async def stats(self) -> Stats:
        """Counts by status, Redis depth, lag and throughput of the last minute.

        Example::

            s = await queue.stats()
            print(f"{s.completed_last_minute} jobs/min, lag {s.lag_seconds:.1f}s")
        """
        ctx = self._context()
        now = self._clock.now()
        queue_stats = await ctx.store.queue_stats(ctx.queue, now)
        depth = await ctx.broker.size(ctx.queue)
        done = await ctx.store.completed_since(ctx.queue, now - timedelta(minutes=1))
        return Stats(
            ctx.queue, queue_stats.counts, depth, queue_stats.lag(now), done, queue_stats.paused
        )

    async def pause(self) -> None:
        """Pause this queue, fleet-wide: jobs already running finish, no job of the queue
        starts until `resume` (in every process serving it, within a second or two), and
        enqueues are still accepted. Stored in PostgreSQL, so a worker started while the
        queue is paused stays paused.

        Example::

            await queue.pause()      # e.g. during a deploy of what the jobs call
            await queue.resume()
        """
        ctx = self._context()
        await ctx.store.set_paused(ctx.queue, True, self._clock.now())

    async def resume(self) -> None:
        """Let the queue's jobs start again after `pause`.

        Example::

            await queue.resume()
        """
        ctx = self._context()
        await ctx.store.set_paused(ctx.queue, False, self._clock.now())

    async def is_paused(self) -> bool:
        """Whether the queue is paused.

        Example::

            if await queue.is_paused(): ...
        """
        ctx = self._context()
        return await ctx.store.is_paused(ctx.queue)

    async def processes(self) -> list[ProcessInfo]:
        """The processes serving this queue now (`serve()`, ``kyu-trio worker``), oldest
        first: each records itself when it starts and every `Config.leader_interval`, and
        deletes its row when it stops; one that died drops out of the list three
        intervals after its last record. ``leader`` marks the one that runs the queue's
        maintenance.

        Example::

            for p in await queue.processes():
                print(p.host, p.pid, p.workers, p.last_seen, "leader" if p.leader else "")
        """
        ctx = self._context()
        return await ctx.store.processes(ctx.queue, self._clock.now())

    async def schema_version(self) -> tuple[int, int]:
        """The database's kyu-trio schema version when this queue connected (before
        `connect` migrated it; 0 for none) and now.

        Example::

            async with queue:
                found, now = await queue.schema_version()
        """
        return await self._context().store.schema_version()

    async def purge(
        self,
        older_than: timedelta,
        statuses: Iterable[JobStatus | str] = (JobStatus.COMPLETED, JobStatus.CANCELLED),
    ) -> int:
        """Delete this queue's finished jobs last updated more than ``older_than`` ago,
        in batches; return how many were deleted. Only final states can be purged;
        ``older_than`` is at most 36525 days (100 years).

        Example::

            deleted = await queue.purge(timedelta(days=7))
        """
        before = self._clock.now() - check_age(older_than)
        wanted = check_final_statuses(statuses)
        ctx = self._context()
        total = 0
        while n := await ctx.store.purge(ctx.queue, wanted, before, 5000):
            total += n
        return total

    # ---- consuming -------------------------------------------------------------------

    async def run_once(self) -> RunSummary:
        """Process what is ready now, then return what was done: one scheduler pass, one
        reaper pass, then every due job with the configured workers. Jobs that fall due
        later (retries, scheduled jobs) are left for the next call. Connects if needed.

        Example::

            async with queue:
                summary = await queue.run_once()   # e.g. from a cron job
            print(summary.completed, "completed")
        """
        async with self._connected() as runtime:
            return await runtime.run_once()

    def shutdown(self) -> None:
        """Start a graceful shutdown of `serve()`, as SIGTERM would. Safe to call any time."""
        self._shutdown_requested = True
        if self._serving is not None:
            self._serving.shutdown()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run workers, scheduler and reaper until SIGINT/SIGTERM or `shutdown()`, then stop
        gracefully (``Config.shutdown_grace``) and return. Connects if needed.

        It returns only after a signal, `shutdown()` or cancellation. An unexpected error in
        any of its tasks requeues every job this process holds, is logged with its
        traceback, and is raised (the error itself when it is the only one, else the
        group). To serve several queues in one process, with one metrics endpoint, use
        `serve_queues`.

        Example::

            trio.run(queue.serve)
        """
        async with metrics_listeners(self.config) as listeners:
            await self._serve(listeners, watch_signals=True, task_status=task_status)

    async def _serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        watch_signals: bool,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """`serve`, with its metrics endpoint on ``listeners`` (none: no endpoint), and
        SIGINT/SIGTERM watched only with ``watch_signals``: `serve_queues` runs this for
        each of its queues, with one endpoint and one signal watcher for all of them."""
        async with self._connected() as runtime:
            self._serving = serving = Serving(runtime, listeners, watch_signals=watch_signals)
            if self._shutdown_requested:
                serving.shutdown()
            try:
                await serving.run(task_status=task_status)
            finally:
                self._serving = None
                self._shutdown_requested = False


__all__: Sequence[str] = ["Queue"]
