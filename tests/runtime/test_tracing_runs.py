"""Tracing (the ``otel`` extra) through the runtime, on the in-memory adapters under
MockClock, with the SDK's in-memory exporter: the enqueue's ``send`` span, each run's
``process`` span as its child (and linked to it), what a run's outcome records, and the
spans a handler makes nesting under its run's."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra and opentelemetry-sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kyu_trio import EnqueueRequest, Snooze, _tracing, current_job
from kyu_trio.testing import memory_queue
from tests.otel_spans import named, spans

__all__ = ["spans"]  # the fixture

tracer = trace.get_tracer("tests")


async def test_a_run_is_a_child_of_the_enqueue_in_one_trace(
    autojump_clock: Any, spans: InMemorySpanExporter
) -> None:
    queue = memory_queue()

    @queue.handler("greet")
    async def greet(payload: str) -> str:
        return f"hello {payload}"

    async with queue:
        with tracer.start_as_current_span("request") as request:
            job_id = await queue.enqueue("greet", "ada")
        await queue.run_once()
        job = await queue.inspect(job_id)

    (send,) = named(spans.get_finished_spans(), "send ")
    (run,) = named(spans.get_finished_spans(), "process ")
    queue_name = queue.config.queue_name
    assert (send.name, send.kind) == (f"send {queue_name}", SpanKind.PRODUCER)
    assert (run.name, run.kind) == (f"process {queue_name}", SpanKind.CONSUMER)
    # request -> send -> process: one trace.
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert run.context.trace_id == send.context.trace_id == request.get_span_context().trace_id
    assert run.parent is not None and run.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in run.links] == [send.context.span_id]
    # What the job stores is the send span's context, in W3C form.
    stored = json.loads(job.trace_context or "")
    assert stored["traceparent"] == (
        f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}"
        f"-{int(send.context.trace_flags):02x}"
    )
    assert dict(send.attributes or {}) == {
        "messaging.system": "kyu-trio",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue_name,
        "messaging.kyu_trio.job.type": "greet",
        "messaging.message.id": job_id,
    }
    attributes = dict(run.attributes or {})
    assert attributes["messaging.system"] == "kyu-trio"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == queue_name
    assert attributes["messaging.message.id"] == job_id
    assert attributes["messaging.kyu_trio.job.type"] == "greet"
    assert attributes["messaging.kyu_trio.job.attempt"] == 1
    assert attributes["messaging.kyu_trio.job.outcome"] == "completed"
    assert attributes["messaging.kyu_trio.job.status"] == "completed"
    assert attributes["messaging.client.id"] == job.locked_by
    assert run.status.status_code is StatusCode.UNSET


async def test_a_batch_is_one_send_span_and_each_run_its_child(
    autojump_clock: Any, spans: InMemorySpanExporter
) -> None:
    queue = memory_queue()

    @queue.handler("a")
    async def a(payload: int) -> None: ...

    @queue.handler("b")
    async def b(payload: int) -> None: ...

    async with queue:
        # A generator: tracing must not consume what the enqueue itself reads.
        ids = await queue.enqueue_many(EnqueueRequest(t, i) for i, t in enumerate("abb"))
        await queue.run_once()

    (send,) = named(spans.get_finished_spans(), "send ")
    runs = named(spans.get_finished_spans(), "process ")
    assert (send.attributes or {})["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in (send.attributes or {})
    assert sorted(r.attributes["messaging.message.id"] for r in runs if r.attributes) == sorted(ids)
    assert {r.parent.span_id for r in runs if r.parent} == {send.context.span_id}


async def test_a_failing_handler_records_its_exception_on_the_run_span(
    autojump_clock: Any, spans: InMemorySpanExporter
) -> None:
    queue = memory_queue()

    @queue.handler("boom")
    async def boom(payload: None) -> None:
        raise ValueError("no such thing")

    async with queue:
        await queue.enqueue("boom", None, max_retries=1)
        await queue.run_once()
        await trio.sleep(3600)  # past its retry's backoff
        await queue.run_once()

    first, last = sorted(
        named(spans.get_finished_spans(), "process "), key=lambda s: s.start_time or 0
    )
    for run in (first, last):
        assert run.status.status_code is StatusCode.ERROR
        assert run.status.description == "ValueError: no such thing"
        (event,) = [e for e in run.events if e.name == "exception"]
        attributes = dict(event.attributes or {})
        assert attributes["exception.type"] == "ValueError"
        assert attributes["exception.message"] == "no such thing"
        stack = str(attributes["exception.stacktrace"])
        assert 'raise ValueError("no such thing")' in stack
        assert (run.attributes or {})["error.type"] == "ValueError"
    assert (first.attributes or {})["messaging.kyu_trio.job.outcome"] == "failed"
    assert (first.attributes or {})["messaging.kyu_trio.job.status"] == "failed"
    assert "messaging.kyu_trio.job.next_run_at" in (first.attributes or {})
    assert (last.attributes or {})["messaging.kyu_trio.job.outcome"] == "dead"
    assert (last.attributes or {})["messaging.kyu_trio.job.attempt"] == 2
    # Both runs of the job belong to its enqueue's trace.
    (send,) = named(spans.get_finished_spans(), "send ")
    assert {first.context.trace_id, last.context.trace_id} == {send.context.trace_id}


async def test_a_timeout_and_a_snooze_are_recorded_as_such(
    autojump_clock: Any, spans: InMemorySpanExporter
) -> None:
    queue = memory_queue()

    @queue.handler("slow")
    async def slow(payload: None) -> None:
        await trio.sleep(60)

    @queue.handler("later")
    async def later(payload: None) -> None:
        raise Snooze(30)

    async with queue:
        await queue.enqueue("slow", None, job_timeout=1.0, max_retries=0)
        await queue.enqueue("later", None)
        await queue.run_once()

    runs = {
        (s.attributes or {})["messaging.kyu_trio.job.type"]: s
        for s in named(spans.get_finished_spans(), "process ")
    }
    timed_out = runs["slow"]
    assert (timed_out.attributes or {})["messaging.kyu_trio.job.outcome"] == "timed_out"
    assert (timed_out.attributes or {})["messaging.kyu_trio.job.status"] == "dead"
    assert (timed_out.attributes or {})["error.type"] == "timeout"
    assert timed_out.status.status_code is StatusCode.ERROR
    assert not [e for e in timed_out.events if e.name == "exception"]
    snoozed = runs["later"]
    assert (snoozed.attributes or {})["messaging.kyu_trio.job.outcome"] == "snoozed"
    assert (snoozed.attributes or {})["messaging.kyu_trio.job.status"] == "scheduled"
    assert "messaging.kyu_trio.job.next_run_at" in (snoozed.attributes or {})
    assert snoozed.status.status_code is StatusCode.UNSET  # a snooze is no error


async def test_spans_a_handler_makes_are_children_of_its_run(
    spans: InMemorySpanExporter,
) -> None:
    # The real clock: MockClock would jump to the job's timeout while the thread runs.
    queue = memory_queue()

    @queue.handler("async")
    async def in_task(payload: None) -> None:
        with tracer.start_as_current_span("inside async"):
            await trio.lowlevel.checkpoint()

    @queue.handler("thread")
    def in_thread(payload: None) -> None:  # runs in a worker thread
        with tracer.start_as_current_span("inside thread"):
            assert current_job().job_type == "thread"

    async with queue:
        await queue.enqueue("async", None)
        await queue.enqueue("thread", None)
        await queue.run_once()

    finished = spans.get_finished_spans()
    runs = {
        (s.attributes or {})["messaging.kyu_trio.job.type"]: s for s in named(finished, "process ")
    }
    for kind in ("async", "thread"):
        (inner,) = [s for s in finished if s.name == f"inside {kind}"]
        assert inner.parent is not None and inner.parent.span_id == runs[kind].context.span_id


async def test_a_job_enqueued_without_a_trace_runs_in_a_trace_of_its_own(
    autojump_clock: Any, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = memory_queue()

    @queue.handler("t")
    async def t(payload: None) -> None: ...

    async with queue:
        # A producer with kyu-trio's tracing turned off stores no trace context.
        monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "flask, kyu_trio")
        _tracing.reset()
        with tracer.start_as_current_span("request"):
            job_id = await queue.enqueue("t", None)
        assert (await queue.inspect(job_id)).trace_context is None
        monkeypatch.delenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")
        _tracing.reset()
        # Even when serving under a span of the caller's: a run is never its child.
        with tracer.start_as_current_span("the worker's own"):
            await queue.run_once()

    assert named(spans.get_finished_spans(), "send ") == []
    (run,) = named(spans.get_finished_spans(), "process ")
    assert run.parent is None and list(run.links) == []
