"""The spans kyu-trio records, for tests: the ``spans`` fixture (import it into a test
module) yields OpenTelemetry's in-memory exporter, empty, recording for that test only.

OpenTelemetry's global tracer provider (which kyu-trio uses, as applications configure
it) can be set once per process. So it is set once, on first use, with a sampler that
records only while a test holds the fixture: the rest of the suite pays for unsampled
spans only, and the exporter never collects another test's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from kyu_trio import _tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_installed: tuple[Any, Any] | None = None


def _install() -> tuple[InMemorySpanExporter, Any]:
    global _installed
    if _installed is not None:
        return _installed
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class Switch(Sampler):
        """Records everything while ``on``, nothing otherwise."""

        on = False

        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if not self.on:
                return SamplingResult(Decision.DROP)
            # The span's attributes are those the sampler hands back.
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "tests.otel_spans.Switch"

    switch = Switch()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=switch)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "something else set the tracer provider"
    _installed = (exporter, switch)
    return _installed


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The exporter of every span ended during the test (SimpleSpanProcessor: exported
    as each span ends)."""
    pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra and opentelemetry-sdk")
    exporter, switch = _install()
    _tracing.reset()
    assert _tracing.hooks().enabled
    exporter.clear()
    switch.on = True
    try:
        yield exporter
    finally:
        switch.on = False
        exporter.clear()


def named(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    """The spans whose name starts with ``prefix`` (``"send "``, ``"process "``)."""
    return [s for s in spans if s.name.startswith(prefix)]
