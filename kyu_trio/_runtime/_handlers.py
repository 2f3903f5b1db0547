"""Handler registry, middleware chain and `current_job`: how one job's code is called."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
import trio

from .._cron import CronEntry
from .._errors import ConfigError, KyuError, UnknownJobType, require_extra
from .._job import Job
from .._ports import Limit
from .._snooze import Backoff
from ._progress import ProgressFlusher

#: A job's code: called with the decoded JSON payload, returning the job's result (a JSON
#: value, or None); ``async def`` (run in the worker task), plain ``def`` (run in a
#: thread) or, registered with ``asyncio=True``, an asyncio coroutine.
Handler = Callable[[Any], Any]
#: What middleware calls to run the rest of the chain (and at its end, the handler).
CallNext = Callable[[], Awaitable[None]]
#: ``async def mw(job: Job, call_next: CallNext) -> None``, registered with `Queue.use`.
Middleware = Callable[[Job, CallNext], Awaitable[None]]
HandlerKind = Literal["async", "sync", "asyncio"]

_current_job: contextvars.ContextVar[Job] = contextvars.ContextVar("kyu_trio.current_job")


def current_job() -> Job:
    """The `Job` the calling handler (or middleware) is running.

    Works in ``async def`` handlers, in plain ``def`` handlers running in a thread, and
    in asyncio handlers.

    Example::

        @queue.handler("resize")
        async def resize(payload: dict) -> None:
            job = current_job()
            print(f"attempt {job.retry_count + 1} of job {job.id}")
    """
    try:
        return _current_job.get()
    except LookupError:
        raise KyuError("current_job() was called outside a running job") from None


@attrs.frozen
class HandlerSpec:
    fn: Handler
    kind: HandlerKind
    #: Snoozes allowed per job (None: unlimited); see `Snooze`.
    max_snoozes: int | None = None
    #: Replaces the queue's exponential retry policy for this job type.
    backoff: Backoff | None = None
    #: Fleet-wide concurrency and rate limits of the job type (None: none).
    limit: Limit | None = None


def handler_kind(fn: Handler, *, asyncio: bool) -> HandlerKind:
    if not callable(fn):
        raise TypeError(f"a handler must be callable, got {fn!r}")
    is_coroutine = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )
    if asyncio:
        if not is_coroutine:
            raise TypeError("asyncio=True needs an `async def` function (an asyncio coroutine)")
        # At registration, not half-way through serve().
        require_extra("trio_asyncio", extra="asyncio", feature="a handler with asyncio=True")
        return "asyncio"
    return "async" if is_coroutine else "sync"


class Registry:
    """Job type -> handler, plus the middleware stack (first registered = outermost)."""

    def __init__(self) -> None:
        self.handlers: dict[str, HandlerSpec] = {}
        self.middleware: list[Middleware] = []
        #: Periodic jobs (`Queue.cron`), in registration order; names are unique.
        self.cron: list[CronEntry] = []

    @property
    def limits(self) -> dict[str, Limit]:
        """The registered job types that have limits, and theirs."""
        return {t: spec.limit for t, spec in self.handlers.items() if spec.limit is not None}

    @property
    def needs_asyncio(self) -> bool:
        return any(spec.kind == "asyncio" for spec in self.handlers.values())

    def lookup(self, job_type: str) -> HandlerSpec:
        try:
            return self.handlers[job_type]
        except KeyError:
            raise UnknownJobType(job_type) from None

    def register_cron(self, entry: CronEntry) -> None:
        """Add a periodic job; `ConfigError` if one of the same name is registered."""
        if any(known.name == entry.name for known in self.cron):
            raise ConfigError(
                f"a cron entry named {entry.name!r} is already registered on this queue: "
                "give each entry its own name= (it defaults to the job type)"
            )
        self.cron.append(entry)

    async def execute(
        self,
        job: Job,
        threads: trio.CapacityLimiter | None = None,
        progress: ProgressFlusher | None = None,
    ) -> Any:
        """Run ``job`` through the middleware chain and its handler, with `current_job` set;
        return what the handler returned.

        The handler is looked up inside the chain, so middleware sees unknown job types
        fail like any other error. A plain ``def`` handler runs in a thread drawn through
        ``threads`` (trio's default limiter, 40 threads, when None). `Job.set_progress`
        reports to ``progress`` (without one, it raises `KyuError`).
        """
        token = _current_job.set(job)
        running = progress.running if progress is not None else None
        if running is not None:
            running[job.id] = job
        # The handler's value bypasses the middleware: a middleware written before results
        # existed (``await call_next()`` without returning it) must not lose it.
        returned: list[Any] = []
        try:
            call: CallNext = functools.partial(self._call_handler, job, threads, returned)
            for mw in reversed(self.middleware):
                call = functools.partial(mw, job, call)
            await call()
        finally:
            if running is not None:
                running.pop(job.id, None)
            _current_job.reset(token)
        return returned[-1] if returned else None

    async def _call_handler(
        self, job: Job, threads: trio.CapacityLimiter | None, returned: list[Any]
    ) -> None:
        spec = self.lookup(job.job_type)
        if spec.kind == "async":
            value = await spec.fn(job.payload)
        elif spec.kind == "sync":
            # A thread cannot be interrupted: on timeout or shutdown we stop waiting for it
            # and record the outcome; the thread finishes (or not) on its own.
            value = await trio.to_thread.run_sync(
                spec.fn, job.payload, abandon_on_cancel=True, limiter=threads
            )
        else:
            import trio_asyncio

            value = await trio_asyncio.aio_as_trio(spec.fn)(job.payload)
        returned.append(value)
