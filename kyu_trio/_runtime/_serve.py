"""The runtime of one connected `Queue`: its maintenance services and worker pool, run
once (`Runtime.run_once`) or supervised until stopped (`Serving`, what `Queue.serve`
runs): signals, the metrics endpoint, and what a crash of any task means."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

from .._config import Config
from .._errors import KyuConnectionError, KyuError
from .._ports import Fence
from .._retry import RetryPolicy
from .._store._postgres import PostgresStore
from ._cron import CronService
from ._handlers import Registry
from ._http import Response, Route, open_http_listeners, serve_http
from ._leader import LeaderService, Leadership
from ._listener import EnqueueListener, NotifyingStore
from ._metrics import MergedRegistries
from ._outage import Outage
from ._pool import WorkerPool
from ._presence import Presence
from ._pruner import Pruner
from ._reaper import Reaper
from ._sampler import Sampler
from ._scheduler import Scheduler
from ._service import Context, ticker
from ._summary import RunSummary, summarize

READY_CHECK_LIMIT = 2.0


def crash(exc: BaseException) -> BaseException | None:
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


@attrs.define
class Runtime:
    """The services of one connected queue."""

    context: Context
    config: Config
    registry: Registry
    worker_id: str
    scheduler: Scheduler = attrs.field(init=False)
    reaper: Reaper = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        config = self.config
        self.scheduler = Scheduler(self.context, config.scheduler_interval)
        self.reaper = Reaper(
            self.context,
            interval=config.reaper_interval,
            stale_after=config.stale_job_timeout,
            policy=RetryPolicy(config.max_backoff, config.retry_jitter),
        )

    def new_leadership(self) -> Leadership:
        """The campaign for the queue's maintenance lease, and what its holder runs."""

        async def scheduler(_fence: Fence) -> None:
            await self.scheduler.run()

        async def reaper(_fence: Fence) -> None:
            await self.reaper.run()

        pruner = Pruner(self.context, self.config)

        async def prune(fence: Fence) -> None:
            outage = Outage(self.context.log, f"pruner of {self.context.queue!r}")
            await ticker(partial(pruner.run_once, fence), self.config.reaper_interval, outage)

        cron = CronService(
            self.context, self.registry.cron, default_job_timeout=self.config.default_job_timeout
        )
        services: list[LeaderService] = [scheduler, reaper, prune, cron.run]
        interval = self.config.leader_interval
        presence = Presence(
            self.context, self.worker_id, workers=self.config.workers, interval=interval
        )
        return Leadership(self.context, self.worker_id, interval, services, presence=presence)

    def new_pool(self, *, drain: bool) -> WorkerPool:
        pool = WorkerPool(
            self.context,
            config=self.config,
            registry=self.registry,
            worker_id=self.worker_id,
            drain=drain,
        )
        self.context.metrics.running.set_function(lambda: pool.running)
        return pool

    @asynccontextmanager
    async def asyncio_loop(self) -> AsyncIterator[None]:
        """trio-asyncio's loop, only when an asyncio handler is registered."""
        if not self.registry.needs_asyncio:
            yield
            return
        import trio_asyncio

        async with trio_asyncio.open_loop():
            yield

    async def run_once(self) -> RunSummary:
        """One scheduler pass, one reaper pass, then every job ready now."""
        promoted = await self.scheduler.run_once()
        rescued = await self.reaper.run_once()
        pool = self.new_pool(drain=True)
        async with self.asyncio_loop(), trio.open_nursery() as nursery:
            await nursery.start(pool.run)
        assert pool.recorded is not None
        return summarize(pool.recorded, promoted=promoted, rescued=rescued)


class Serving:
    """One `Queue.serve` call: runs workers, scheduler, reaper, sampler, the metrics
    endpoint and the signal watcher until `shutdown`, then stops them gracefully."""

    def __init__(
        self,
        runtime: Runtime,
        listeners: list[trio.SocketListener],
        *,
        watch_signals: bool = True,
    ) -> None:
        self._runtime = runtime
        self._listeners = listeners
        # False under serve_queues, which watches signals once for all its queues.
        self._watch_signals = watch_signals
        self._stop = trio.Event()
        self.pool = runtime.new_pool(drain=False)
        self.leadership: Leadership | None = None
        #: The port the metrics endpoint listens on, once started.
        self.metrics_port: int | None = None

    def shutdown(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runtime, pool = self._runtime, self.pool
        config, ctx = runtime.config, runtime.context
        try:
            async with runtime.asyncio_loop(), trio.open_nursery() as nursery:
                leadership = self.leadership = runtime.new_leadership()
                await nursery.start(leadership.run)
                sampler = Sampler(ctx, config.metrics_sample_interval, lambda: leadership.leading)
                await nursery.start(sampler.run)
                if isinstance(ctx.store, NotifyingStore):
                    # Jobs enqueued inside callers' transactions (conn=) reach the
                    # broker through it (what it missed while away, the reaper's pass
                    # pushes; only PostgreSQL can miss any), and cancels of running
                    # jobs reach the pool.
                    catch_up = (
                        runtime.reaper.run_once
                        if isinstance(ctx.store, PostgresStore)
                        else trio.lowlevel.checkpoint
                    )
                    listener = EnqueueListener(ctx, ctx.store, catch_up, pool.cancel_running)
                    await nursery.start(listener.run)
                if self._listeners:
                    self.metrics_port = await nursery.start(
                        partial(
                            serve_http,
                            config.metrics_host,
                            config.metrics_port,
                            self._routes(),
                            ctx.log,
                            listeners=self._listeners,
                        )
                    )
                if self._watch_signals and threading.current_thread() is threading.main_thread():
                    await nursery.start(self._watch_signals_task)
                await nursery.start(self._supervise_pool, nursery.cancel_scope)
                ctx.log.info(
                    "serving queue %r with %d workers as %s",
                    ctx.queue,
                    config.workers,
                    runtime.worker_id,
                )
                task_status.started()
                await self._stop.wait()
                await pool.shutdown(config.shutdown_grace)
        except BaseException as exc:
            crashed = crash(exc)
            if crashed is None:
                raise
            ctx.log.critical(
                "worker %s stopped by an unexpected error; the jobs it held were requeued",
                runtime.worker_id,
                exc_info=crashed,
            )
            if crashed is exc:
                raise
            raise crashed from exc

    def _routes(self) -> dict[str, Route]:
        return metrics_routes([self._runtime.context])

    async def _supervise_pool(
        self,
        done: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pool.run)
            task_status.started()
        if not self._stop.is_set():
            # The pool stops only when asked: returning otherwise is a bug, and serve()
            # must not pass it off as a clean stop.
            raise KyuError("the worker pool stopped without being asked to (a kyu-trio bug)")
        # The pool has stopped and recorded every outcome: stop the maintenance tasks.
        done.cancel()

    async def _watch_signals_task(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        runtime = self._runtime
        await watch_signals(
            runtime.context.log,
            runtime.config.shutdown_grace,
            self.shutdown,
            self.pool.cancel_jobs,
            task_status=task_status,
        )


@asynccontextmanager
async def metrics_listeners(config: Config) -> AsyncIterator[list[trio.SocketListener]]:
    """The metrics port, bound before connecting and outside serve()'s nursery: a taken
    port fails at once, as a bare MetricsPortError (the CLI's one line), not as a crash."""
    if not config.metrics_port:
        yield []
        return
    listeners = await open_http_listeners(config.metrics_host, config.metrics_port)
    try:
        yield listeners
    finally:
        for listener in listeners:  # serve_http closes them, unless it never started
            await trio.aclose_forcefully(listener)


# ---- shared with serve_queues (several queues, one endpoint, one signal watcher) ---------


def metrics_routes(contexts: Sequence[Context]) -> dict[str, Route]:
    """/metrics, /healthz and /readyz over the queues of ``contexts``: one exposition of
    all their registries (their samples carry a ``queue`` label), and ready when every
    queue reaches its PostgreSQL and Redis."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    exposed = MergedRegistries([ctx.metrics.registry for ctx in contexts])
    several = len(contexts) > 1

    async def metrics() -> Response:
        return Response(200, generate_latest(exposed), CONTENT_TYPE_LATEST)

    async def healthz() -> Response:
        return Response(200, b"ok\n")

    async def readyz() -> Response:
        checks = [
            (ctx, name, check)
            for ctx in contexts
            for name, check in (("PostgreSQL", ctx.store.ping), ("Redis", ctx.broker.ping))
        ]
        found: list[str | None] = [None] * len(checks)

        async def run(i: int) -> None:
            ctx, name, check = checks[i]
            try:
                with trio.fail_after(READY_CHECK_LIMIT):
                    await check()
            except KyuConnectionError as exc:
                found[i] = str(exc)
            except trio.TooSlowError:
                found[i] = f"{name} did not answer within {READY_CHECK_LIMIT}s"
            if found[i] is not None and several:
                found[i] = f"queue {ctx.queue!r}: {found[i]}"

        # At once: N queues must not take N times the check limit to answer.
        async with trio.open_nursery() as nursery:
            for i in range(len(checks)):
                nursery.start_soon(run, i)
        problems = [p for p in found if p is not None]
        if problems:
            return Response(503, ("not ready: " + "; ".join(problems) + "\n").encode())
        return Response(200, b"ready\n")

    return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}


async def watch_signals(
    log: logging.Logger,
    grace: float,
    shutdown: Callable[[], None],
    cancel_jobs: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGINT/SIGTERM: the first calls ``shutdown`` (running jobs get ``grace`` seconds),
    any later one ``cancel_jobs`` (requeue them now). One per process: a second receiver
    would take the signals from the first."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        seen = 0
        async for signum in signals:
            seen += 1
            if seen == 1:
                log.warning(
                    "%s: finishing running jobs (up to %.0fs; signal again to stop now)",
                    signal.Signals(signum).name,
                    grace,
                )
                shutdown()
            else:
                log.warning("second signal: requeueing running jobs now")
                cancel_jobs()
