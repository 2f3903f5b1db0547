"""Tracing with OpenTelemetry (the ``otel`` extra): a ``send <queue>`` span for each
enqueue call and a ``process <queue>`` span for each run, following OpenTelemetry's
messaging conventions. The enqueue span's context (W3C ``traceparent``, through the
configured propagator) is stored with each job it writes, so that every run of the job is
a child of that span, also when it was enqueued by another process (`Client`,
`AsyncioClient`).

OpenTelemetry is looked for once, the first time a hook runs (never by ``import
kyu_trio``). Without it, or with ``kyu_trio`` in ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``,
every hook is a no-op that costs a function call; with it, spans go to the global tracer
provider, and without an SDK configured there they are OpenTelemetry's own no-ops.

The hooks are called at three places: `traced_enqueue` wraps each ``enqueue_many``
(which ``enqueue`` calls), the worker pool calls `Tracing.run_started` just before a
job's handler runs and `Tracing.run_ended` once the run's outcome is decided.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._job import EnqueueRequest, JobStatus
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from ._job import Job
    from ._runtime._outcomes import Outcome

#: ``messaging.system`` of every span.
SYSTEM = "kyu-trio"
#: The instrumentation's name: the tracer's, and what turns it off in
#: ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (as does ``kyu-trio``).
NAME = "kyu_trio"
DISABLE_VARIABLE = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"

# Attributes of our own, in the `messaging.{system}` namespace the conventions ask for.
JOB_TYPE = "messaging.kyu_trio.job.type"
ATTEMPT = "messaging.kyu_trio.job.attempt"
RETRY_COUNT = "messaging.kyu_trio.job.retry_count"
#: How the run ended, as its `Attempt.outcome` says (completed, failed, dead, timed_out,
#: snoozed, requeued, cancelled).
OUTCOME = "messaging.kyu_trio.job.outcome"
#: Where the run left the job: its status (completed, failed, dead, scheduled, pending...).
STATUS = "messaging.kyu_trio.job.status"
#: When the job runs next (a retry, or a snooze), ISO 8601.
NEXT_RUN_AT = "messaging.kyu_trio.job.next_run_at"
#: The enqueue wrote through the caller's connection (``conn=``): the jobs exist only if
#: the caller commits.
TRANSACTIONAL = "messaging.kyu_trio.transactional"

#: Job statuses after a run that make its span an error.
_ERROR_STATUSES = frozenset({JobStatus.FAILED, JobStatus.DEAD})

#: While a traced enqueue runs: its span's context as JSON text, which each job it
#: writes stores (`validate_request` reads it). Unset, hence None, when tracing is off.
_enqueue_context: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kyu_trio.enqueue_trace_context", default=None
)


def enqueue_context() -> str | None:
    """The trace context the job being enqueued stores: JSON text of the propagator's
    carrier, or None (no traced enqueue is running, or it had nothing to propagate).

    Example::

        new_job = attrs.evolve(new_job, trace_context=enqueue_context())
    """
    return _enqueue_context.get()


class Tracing:
    """The hooks with tracing off: each does nothing.

    Example::

        hooks().run_started(job)  # opens the run's span when tracing is on
    """

    #: Whether spans are made (`OtelTracing`).
    enabled = False

    def configured(self) -> bool:
        """Whether these hooks are to be used now (OpenTelemetry: a provider is set)."""
        return True

    def run_started(self, job: Job) -> None:
        """A worker is about to run ``job``'s handler, in the calling task: open the run's
        span and make it current there (and so in the handler, also in its thread)."""

    def run_ended(self, outcome: Outcome) -> None:
        """The run's outcome is decided, in the task that ran it: record it on the span
        and end it. Does nothing for an outcome of a job that did not run here."""

    @contextlib.contextmanager
    def sending(
        self, queue: str, jobs: object, *, transactional: bool
    ) -> Iterator[Callable[[list[str]], None]]:
        """The span of one enqueue call; call what it yields with the ids written."""
        yield _ignore


def _ignore(ids: list[str]) -> None:
    return None


class _Run:
    """The span of the run in progress in a worker task, and its context's token."""

    __slots__ = ("job", "span", "token")

    def __init__(self, job: Job, span: Span, token: contextvars.Token[Context]) -> None:
        self.job = job
        self.span = span
        self.token = token


#: Per worker task: its run in progress (a worker runs one job at a time).
_running: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
    "kyu_trio.run_span", default=None
)


class OtelTracing(Tracing):
    """The hooks with OpenTelemetry installed: spans through the global tracer provider.

    A run's span is a child of the span that enqueued the job, so that the request that
    enqueued it and each of its runs are one trace, and it also links to that span, as
    the messaging conventions ask of a ``process`` span.

    Example::

        tracing = OtelTracing()
        with tracing.sending("kyu:default", [("t", None)], transactional=False) as sent:
            sent(["0190..."])
    """

    enabled = True

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import ProxyTracerProvider, Status, StatusCode

        self._get_tracer_provider = trace.get_tracer_provider
        self._unset = (ProxyTracerProvider, trace.NoOpTracerProvider)
        self._provider_set = False
        self._look_again_at = -math.inf

        self._tracer = trace.get_tracer(NAME, __version__)
        self._set_span_in_context = trace.set_span_in_context
        self._get_current_span = trace.get_current_span
        self._link = trace.Link
        self._producer = trace.SpanKind.PRODUCER
        self._consumer = trace.SpanKind.CONSUMER
        self._inject = propagate.inject
        self._extract = propagate.extract
        self._attach = context.attach
        self._detach = context.detach
        self._root = context.Context
        self._status = Status
        self._error = StatusCode.ERROR

    def configured(self) -> bool:
        # Once set, the global provider cannot change: no need to look again. Until then,
        # look at most once a second: get_tracer_provider() reads os.environ each time
        # (a few us, per job).
        if not self._provider_set:
            now = time.monotonic()
            if now < self._look_again_at:
                return False
            self._look_again_at = now + 1.0
            self._provider_set = not isinstance(self._get_tracer_provider(), self._unset)
        return self._provider_set

    # ---- producer ----------------------------------------------------------------------

    @contextlib.contextmanager
    def sending(
        self, queue: str, jobs: object, *, transactional: bool
    ) -> Iterator[Callable[[list[str]], None]]:
        attributes: dict[str, str | bool] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
        }
        job_type = _single_type(jobs)
        if job_type is not None:
            attributes[JOB_TYPE] = job_type
        if transactional:
            attributes[TRANSACTIONAL] = True
        span = self._tracer.start_span(f"send {queue}", kind=self._producer, attributes=attributes)
        ctx = self._set_span_in_context(span)
        carrier: dict[str, str] = {}
        self._inject(carrier, context=ctx)
        # Compact: one copy per job row. Nothing to propagate (a span that is not
        # sampled still has a context to pass on; no context at all is rare): NULL.
        text = json.dumps(carrier, separators=(",", ":")) if carrier else None
        stored = _enqueue_context.set(text)
        token = self._attach(ctx)
        try:
            yield functools.partial(_sent, span)
        except BaseException as exc:
            self._failed(span, exc)
            raise
        finally:
            self._detach(token)
            _enqueue_context.reset(stored)
            span.end()

    def _failed(self, span: Span, exc: BaseException) -> None:
        if not span.is_recording():
            return
        if isinstance(exc, Exception):  # not trio's or asyncio's cancellation
            span.record_exception(exc)
        span.set_attribute("error.type", _type_name(exc))
        span.set_status(self._status(self._error, f"{type(exc).__name__}: {exc}"))

    # ---- consumer ----------------------------------------------------------------------

    def run_started(self, job: Job) -> None:
        # Never the worker task's own context: a run of a job enqueued without a trace
        # is a trace of its own, not a child of whatever span serve() was called in.
        parent = self._parent(job.trace_context)
        links = []
        enqueued = self._get_current_span(parent).get_span_context()
        if enqueued.is_valid:
            links.append(self._link(enqueued))
        attributes: dict[str, str | int] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            JOB_TYPE: job.job_type,
            ATTEMPT: job.attempt,
            RETRY_COUNT: job.retry_count,
        }
        if job.locked_by is not None:
            attributes["messaging.client.id"] = job.locked_by
        span = self._tracer.start_span(
            f"process {job.queue}",
            context=parent,
            kind=self._consumer,
            attributes=attributes,
            links=links,
        )
        token = self._attach(self._set_span_in_context(span, parent))
        _running.set(_Run(job, span, token))

    def _parent(self, trace_context: str | None) -> Context:
        """The context a job stored, or an empty one (none, or not one we can read)."""
        root = self._root()
        if not trace_context:
            return root
        try:
            carrier = json.loads(trace_context)
        except ValueError:
            return root
        if not isinstance(carrier, dict):
            return root
        return self._extract(carrier, context=root)

    def run_ended(self, outcome: Outcome) -> None:
        run = _running.get()
        if run is None or run.job is not outcome.job:
            return  # a job handed back without running (shutdown): no span
        _running.set(None)
        self._detach(run.token)
        span = run.span
        if span.is_recording():
            self._record(span, outcome)
        span.end()

    def _record(self, span: Span, outcome: Outcome) -> None:
        # One set_attributes call: the SDK takes its span's lock once per call.
        failure = outcome.failure
        if failure is None:
            completed = outcome.kind.value == "complete"
            span.set_attributes(
                {
                    OUTCOME: "completed" if completed else "requeued",
                    STATUS: "completed" if completed else JobStatus.PENDING.value,
                }
            )
            return
        attributes = {OUTCOME: failure.outcome, STATUS: failure.status.value}
        if failure.due is not None:
            attributes[NEXT_RUN_AT] = failure.due.isoformat()
        if failure.status not in _ERROR_STATUSES:
            span.set_attributes(attributes)
            return  # snoozed, cancelled: not an error
        message = failure.error_message
        name, _, text = message.partition(": ")
        attributes["error.type"] = "timeout" if failure.outcome == "timed_out" else name
        span.set_attributes(attributes)
        if outcome.traceback is not None:
            # The handler's exception, as `Span.record_exception` records one: the run
            # keeps its text (the exception object is gone by the time the outcome is
            # decided), and the stack is the one the job's attempt history keeps.
            span.add_event(
                "exception",
                {
                    "exception.type": name,
                    "exception.message": text,
                    "exception.stacktrace": outcome.traceback,
                },
            )
        span.set_status(self._status(self._error, message))


def _sent(span: Span, ids: list[str]) -> None:
    if not span.is_recording():
        return
    if len(ids) == 1:
        span.set_attribute("messaging.message.id", ids[0])
    else:
        span.set_attribute("messaging.batch.message_count", len(ids))


def _single_type(jobs: object) -> str | None:
    """The job type of every item of an enqueue, when a list or tuple of them (never an
    iterator: the enqueue itself consumes it) has just one."""
    if not isinstance(jobs, list | tuple) or not jobs:
        return None
    types: set[object] = set()
    for item in jobs:
        if isinstance(item, EnqueueRequest):
            types.add(item.job_type)
        elif isinstance(item, tuple) and item:
            types.add(item[0])
        if len(types) > 1:
            return None
    only = types.pop() if types else None
    return only if isinstance(only, str) else None


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


# ---- the hooks in use -------------------------------------------------------------------

_hooks: Tracing | None = None


def _disabled_by_environment() -> bool:
    names = os.environ.get(DISABLE_VARIABLE, "")
    return bool({n.strip() for n in names.split(",")} & {NAME, "kyu-trio"})


def _load() -> Tracing:
    global _hooks
    loaded = Tracing()
    if not _disabled_by_environment():
        # ImportError: the otel extra is not installed.
        with contextlib.suppress(ImportError):
            loaded = OtelTracing()
    _hooks = loaded
    return loaded


#: The no-op hooks, also in use while OpenTelemetry is installed but no tracer provider
#: is set: its default provider would drop every span, and building them costs the
#: worker ~10 us per job for nothing.
_OFF = Tracing()


def hooks() -> Tracing:
    """The hooks in use: `OtelTracing` when OpenTelemetry is installed and a tracer
    provider is set (`opentelemetry.trace.set_tracer_provider`, or the SDK's
    auto-configuration), else no-ops. Installed or not is found out once, on the first
    call; the provider is looked for at most once a second until one is set.

    Example::

        hooks().run_ended(outcome)
    """
    found = _hooks or _load()
    return found if found.configured() else _OFF


def reset() -> None:
    """Look for OpenTelemetry again at the next hook (for tests).

    Example::

        monkeypatch.setitem(sys.modules, "opentelemetry", None)
        reset()
        assert not hooks().enabled
    """
    global _hooks
    _hooks = None


_F = TypeVar("_F", bound=Callable[..., Any])


def traced_enqueue(method: _F) -> _F:
    """Decorate an ``enqueue_many(self, jobs, *, conn=None)`` method (sync or async, of
    an object with a ``config``): with tracing on, it runs in a ``send <queue>`` span
    whose context each job it writes stores; off, it costs one more call.

    Example::

        class Client:
            @traced_enqueue
            def enqueue_many(self, jobs, *, conn=None) -> list[str]: ...
    """
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def traced(self: Any, jobs: Any, *args: Any, **kwargs: Any) -> Any:
            tracing = hooks()
            if not tracing.enabled:
                return await method(self, jobs, *args, **kwargs)
            transactional = kwargs.get("conn") is not None
            with tracing.sending(self.config.queue_name, jobs, transactional=transactional) as sent:
                ids = await method(self, jobs, *args, **kwargs)
                sent(ids)
            return ids

        return cast(_F, traced)

    @functools.wraps(method)
    def traced_blocking(self: Any, jobs: Any, *args: Any, **kwargs: Any) -> Any:
        tracing = hooks()
        if not tracing.enabled:
            return method(self, jobs, *args, **kwargs)
        transactional = kwargs.get("conn") is not None
        with tracing.sending(self.config.queue_name, jobs, transactional=transactional) as sent:
            ids = method(self, jobs, *args, **kwargs)
            sent(ids)
        return ids

    return cast(_F, traced_blocking)
