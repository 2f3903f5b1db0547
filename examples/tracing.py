"""Tracing with OpenTelemetry: the request that enqueues a job and each run of it, in one
trace, from the web process that enqueues to the worker that runs it::

    pip install 'kyu-trio[otel]' opentelemetry-sdk
    .venv/bin/python examples/tracing.py

The spans go to an in-memory exporter, printed at the end as one tree per trace, so that
the example shows what it recorded; an application exports them to its collector
instead (see the comment in ``setup_tracing``). It connects to
``postgresql://postgres@127.0.0.1:5432/test`` and ``redis://127.0.0.1:6379/0`` unless
KYU_DSN / KYU_REDIS_URL say otherwise, and uses the queue ``kyu:shop`` unless KYU_QUEUE
says otherwise.
"""

from __future__ import annotations

import os
from collections import defaultdict

import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kyu_trio import Client, Config, Queue


def config() -> Config:
    defaults = {
        "dsn": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
        "queue_name": "kyu:shop",
    }
    set_by_env = {"dsn": "KYU_DSN", "redis_url": "KYU_REDIS_URL", "queue_name": "KYU_QUEUE"}
    overrides = {k: v for k, v in defaults.items() if not os.environ.get(set_by_env[k])}
    return Config.from_env(**overrides)


def setup_tracing() -> InMemorySpanExporter:
    # [setup]
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    # Once per process, as for any OpenTelemetry instrumentation: kyu-trio's spans go to
    # the global tracer provider. In production, export to your collector instead:
    #   provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # [/setup]
    return exporter


tracer = trace.get_tracer("shop")


# [worker]
def make_worker(config: Config) -> Queue:
    queue = Queue(config)

    @queue.handler("send_receipt")
    async def send_receipt(order: dict[str, int]) -> str:
        # Runs inside the job's `process` span: this span is its child.
        with tracer.start_as_current_span("render receipt"):
            return f"receipt for order {order['order_id']}"

    @queue.handler("charge_card")
    async def charge_card(order: dict[str, int]) -> None:
        raise RuntimeError(f"card declined for order {order['order_id']}")

    return queue


# [/worker]


def place_order(client: Client, order_id: int) -> list[str]:
    # [enqueue]
    # In your web handler: the enqueue is a `send` span of the request's trace, and the
    # job carries that trace to the worker that runs it.
    with tracer.start_as_current_span("POST /orders"):
        return [
            client.enqueue("charge_card", {"order_id": order_id}, max_retries=0),
            client.enqueue("send_receipt", {"order_id": order_id}),
        ]
    # [/enqueue]


def print_traces(spans: tuple[ReadableSpan, ...]) -> None:
    """Each trace as a tree of span names, children indented under their parent."""
    children: defaultdict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        children[span.parent.span_id if span.parent else None].append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        status = span.status.status_code.name
        print(f"{'    ' * depth}{span.name}  [{status}]")
        for event in span.events:
            if event.name == "exception" and event.attributes:
                print(f"{'    ' * depth}  exception: {event.attributes['exception.message']}")
        for child in children[span.context.span_id]:
            show(child, depth + 1)

    for root in children[None]:
        print(f"trace {root.context.trace_id:032x}")
        show(root, 1)


def main() -> None:
    exporter = setup_tracing()
    cfg = config()
    with Client(cfg) as client:
        ids = place_order(client, order_id=42)
    worker = make_worker(cfg)

    async def work_off() -> None:  # stands in for `kyu-trio worker`
        async with worker:
            await worker.run_once()

    trio.run(work_off)
    spans = exporter.get_finished_spans()
    print_traces(spans)

    (request,) = [s for s in spans if s.name == "POST /orders"]
    runs = [s for s in spans if s.name.startswith("process ")]
    assert {r.attributes["messaging.message.id"] for r in runs if r.attributes} == set(ids)
    assert all(r.context.trace_id == request.context.trace_id for r in runs)
    (failed,) = [r for r in runs if r.status.status_code.name == "ERROR"]
    assert any(e.name == "exception" for e in failed.events)
    print("OK: the request, both enqueues and both runs are one trace")


if __name__ == "__main__":
    main()
