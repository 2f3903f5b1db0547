"""Tracing (the ``otel`` extra) against real PostgreSQL and Redis, with the SDK's
in-memory exporter (issue 14, point 6): an enqueue span and its run's span in the same
trace, also when a `Client` in another process enqueued the job (with a tracer provider
of its own: only the trace context stored with the job joins the two), with
`AsyncioClient`, with ``conn=``, and through every insert path (one row, COPY, unique
keys); a failing handler records its exception; and examples/tracing.py runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra and opentelemetry-sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from kyu_trio import AsyncioClient, Client, Config, EnqueueRequest, Queue
from tests.otel_spans import named, spans

__all__ = ["spans"]  # the fixture

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

tracer = trace.get_tracer("tests")

#: Enqueues one job with a `Client` under a span of its own tracer provider, and prints
#: the job id with the trace and span ids of its `send` span.
PRODUCER = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from kyu_trio import Client, Config

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
dsn, redis_url, queue = sys.argv[1:4]
with Client(Config(dsn=dsn, redis_url=redis_url, queue_name=queue)) as client:
    with trace.get_tracer("producer").start_as_current_span("POST /signup"):
        job_id = client.enqueue("welcome", {"user": 7})
(send,) = [s for s in exporter.get_finished_spans() if s.name.startswith("send ")]
print(json.dumps({"job_id": job_id, "trace_id": send.context.trace_id,
                  "span_id": send.context.span_id, "pid": __import__("os").getpid()}))
"""


def worker(config: Config, fail: bool = False) -> Queue:
    queue = Queue(config)

    @queue.handler("welcome")
    async def welcome(payload: Any) -> None:
        if fail:
            raise LookupError(f"no user {payload['user']}")

    return queue


async def run_all(queue: Queue) -> None:
    async with queue:
        await queue.run_once()


def the_run(spans: InMemorySpanExporter, job_id: str) -> ReadableSpan:
    (run,) = [
        s
        for s in named(spans.get_finished_spans(), "process ")
        if (s.attributes or {}).get("messaging.message.id") == job_id
    ]
    return run


async def test_a_job_enqueued_by_a_client_in_another_process_runs_in_its_trace(
    make_config: Callable[..., Config], spans: InMemorySpanExporter
) -> None:
    config = make_config()
    # The producer's schema first: its Client would migrate too, but one at a time is
    # quicker to read in a failure.
    async with Queue(config):
        pass
    done = await trio.run_process(
        [sys.executable, "-c", PRODUCER, config.dsn, config.redis_url, config.queue_name],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    sent = json.loads(done.stdout)
    assert sent["pid"] != os.getpid()
    # Nothing of the producer's spans is in this process: only what the job stored.
    assert named(spans.get_finished_spans(), "send ") == []

    await run_all(worker(config))

    run = the_run(spans, sent["job_id"])
    assert run.context.trace_id == sent["trace_id"]
    assert run.parent is not None and run.parent.span_id == sent["span_id"]
    assert run.parent.is_remote
    assert [link.context.span_id for link in run.links] == [sent["span_id"]]
    assert (run.attributes or {})["messaging.kyu_trio.job.outcome"] == "completed"


async def test_a_queue_stores_the_context_and_a_failing_run_records_its_exception(
    make_config: Callable[..., Config], spans: InMemorySpanExporter
) -> None:
    queue = worker(make_config(), fail=True)
    async with queue:
        with tracer.start_as_current_span("request"):
            job_id = await queue.enqueue("welcome", {"user": 3}, max_retries=0)
        job = await queue.inspect(job_id)
        await queue.run_once()

    (send,) = named(spans.get_finished_spans(), "send ")
    assert job.trace_context is not None
    assert json.loads(job.trace_context)["traceparent"].split("-")[1:3] == [
        f"{send.context.trace_id:032x}",
        f"{send.context.span_id:016x}",
    ]
    run = the_run(spans, job_id)
    assert run.context.trace_id == send.context.trace_id
    assert run.status.status_code is StatusCode.ERROR
    (event,) = [e for e in run.events if e.name == "exception"]
    assert (event.attributes or {})["exception.type"] == "LookupError"
    assert (event.attributes or {})["exception.message"] == "no user 3"
    assert (run.attributes or {})["messaging.kyu_trio.job.outcome"] == "dead"


def test_every_insert_path_stores_the_enqueue_span_context(
    make_config: Callable[..., Config], spans: InMemorySpanExporter
) -> None:
    """One row (INSERT_ONE), a batch (COPY), keyed rows (INSERT_UNIQUE and
    INSERT_UNIQUE_MANY), and through the caller's connection (``conn=``)."""
    config = make_config()
    with Client(config) as client:
        calls: list[list[str]] = [
            [client.enqueue("welcome", {"user": 1})],
            client.enqueue_many([("welcome", {"user": 2}), ("welcome", {"user": 3})]),
            [client.enqueue("welcome", {"user": 4}, unique_key="u4")],
            client.enqueue_many(
                [
                    EnqueueRequest("welcome", {"user": 5}, unique_key="u5"),
                    EnqueueRequest("welcome", {"user": 6}, unique_key="u6"),
                ]
            ),
        ]
        with psycopg.connect(config.dsn) as conn:
            calls.append([client.enqueue("welcome", {"user": 7}, conn=conn)])
        sends = named(spans.get_finished_spans(), "send ")
        assert len(sends) == len(calls)
        for send, ids in zip(sends, calls, strict=True):
            for job_id in ids:
                stored = json.loads(client.inspect(job_id).trace_context or "{}")
                assert stored["traceparent"].split("-")[2] == f"{send.context.span_id:016x}"
    assert (sends[-1].attributes or {})["messaging.kyu_trio.transactional"] is True
    assert (sends[1].attributes or {})["messaging.batch.message_count"] == 2

    trio.run(run_all, worker(config))
    for send, ids in zip(sends, calls, strict=True):
        for job_id in ids:
            run = the_run(spans, job_id)
            assert run.parent is not None and run.parent.span_id == send.context.span_id


def test_asyncio_client_enqueues_in_the_callers_trace(
    make_config: Callable[..., Config], spans: InMemorySpanExporter
) -> None:
    config = make_config()

    async def produce() -> list[str]:
        async with AsyncioClient(config) as client:
            with tracer.start_as_current_span("asyncio request"):
                return [
                    await client.enqueue("welcome", {"user": 1}),
                    *await client.enqueue_many([("welcome", {"user": 2})] * 3),
                ]

    ids = asyncio.run(produce())
    trio.run(run_all, worker(config))

    (request,) = [s for s in spans.get_finished_spans() if s.name == "asyncio request"]
    sends = named(spans.get_finished_spans(), "send ")
    assert len(sends) == 2
    assert {s.parent.span_id for s in sends if s.parent} == {request.context.span_id}
    for job_id in ids:
        assert the_run(spans, job_id).context.trace_id == request.context.trace_id


def test_the_tracing_example(pg_dsn: str, redis_url: str, queue_name: str) -> None:
    env = {
        **os.environ,
        "KYU_DSN": pg_dsn,
        "KYU_REDIS_URL": redis_url,
        "KYU_QUEUE": queue_name,
        "PYTHONIOENCODING": "utf-8",
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "tracing.py")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert "OK: the request, both enqueues and both runs are one trace" in lines
    # One trace: the request, its two sends, a run under each, the handler's own span.
    assert sum(line.startswith("trace ") for line in lines) == 1
    assert f"            process {queue_name}  [ERROR]" in lines
    assert "                render receipt  [UNSET]" in lines
