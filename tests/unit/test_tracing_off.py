"""Tracing off (the ``otel`` extra not installed, or turned off): ``import kyu_trio``
never imports OpenTelemetry, every hook is a no-op, jobs run and store no trace context.
No servers."""

from __future__ import annotations

import ast
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kyu_trio import _tracing
from kyu_trio._job import Job, JobStatus
from kyu_trio._runtime._outcomes import Kind, Outcome
from tests.unit.test_packaging import _module_level_imports

ROOT = Path(__file__).resolve().parents[2]

#: Runs in a fresh interpreter where ``opentelemetry`` cannot be imported (as without the
#: extra), jobs through a queue on the in-memory adapters, then prints what it found.
WITHOUT_OTEL = """
import sys
from importlib.abc import MetaPathFinder

class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
import trio
from kyu_trio import _tracing
from kyu_trio.testing import memory_queue

async def main():
    queue = memory_queue()

    @queue.handler("t")
    async def t(payload):
        if payload == "boom":
            raise ValueError(payload)

    async with queue:
        ids = [await queue.enqueue("t", "ok")]
        ids += await queue.enqueue_many([("t", "boom"), ("t", "ok")])
        summary = await queue.run_once()
        jobs = [await queue.inspect(i) for i in ids]
    print(summary.completed, summary.failed, [j.trace_context for j in jobs])

trio.run(main)
print(type(_tracing.hooks()).__name__, _tracing.hooks().enabled)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_without_opentelemetry_jobs_run_untraced_and_nothing_is_imported() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2 1 [None, None, None]", "Tracing False", "[]"]


def test_import_kyu_trio_does_not_look_for_opentelemetry() -> None:
    # Only the first hook does. (redis-py may import parts of it by itself when installed,
    # so what sys.modules holds is not the test.)
    code = "import kyu_trio, kyu_trio._cli; print(kyu_trio._tracing._hooks)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


def test_no_module_of_kyu_trio_imports_opentelemetry_at_import_time() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "kyu_trio").rglob("*.py"))
        for name, line in _module_level_imports(ast.parse(path.read_text(), str(path)))
        if name == "opentelemetry"
    ]
    assert offenders == []


@pytest.fixture
def off(monkeypatch: pytest.MonkeyPatch) -> object:
    """The hooks as found without the extra (``opentelemetry`` cannot be imported)."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    _tracing.reset()
    yield _tracing.hooks()
    _tracing.reset()  # found again, as installed, by the next test that asks


def _job() -> Job:
    now = datetime.now(UTC)
    return Job(
        id="0190d2b1-0000-7000-8000-000000000000",
        queue="kyu:q",
        job_type="t",
        payload=None,
        status=JobStatus.RUNNING,
        priority=0,
        scheduled_at=now,
        max_retries=0,
        retry_count=0,
        error_message=None,
        locked_by="w",
        locked_at=now,
        completed_at=None,
        job_timeout=1.0,
        created_at=now,
        updated_at=now,
        trace_context='{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}',
    )


def test_without_the_extra_every_hook_is_a_no_op(off: _tracing.Tracing) -> None:
    assert type(off) is _tracing.Tracing and not off.enabled
    job = _job()
    assert off.run_started(job) is None
    assert off.run_ended(Outcome(Kind.COMPLETE, job, 0.1)) is None
    assert _tracing.enqueue_context() is None

    class Producer:
        config = None  # never read while tracing is off

        @_tracing.traced_enqueue
        def enqueue_many(self, jobs: list[str], *, conn: object = None) -> list[str]:
            assert _tracing.enqueue_context() is None
            return jobs

        @_tracing.traced_enqueue
        async def enqueue_many_async(self, jobs: list[str]) -> list[str]:
            return jobs

    assert Producer().enqueue_many(["a", "b"]) == ["a", "b"]
    coro = Producer().enqueue_many_async(["c"])
    with pytest.raises(StopIteration) as stopped:
        coro.send(None)
    assert stopped.value.value == ["c"]


@pytest.mark.parametrize("names", ["kyu_trio", "flask,kyu-trio", " requests , kyu_trio "])
def test_otel_python_disabled_instrumentations_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, names: str
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", names)
    _tracing.reset()
    try:
        assert not _tracing.hooks().enabled
    finally:
        monkeypatch.delenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")
        _tracing.reset()


def test_the_hooks_are_looked_for_once() -> None:
    _tracing.reset()
    first = _tracing.hooks()
    assert _tracing.hooks() is first


# OpenTelemetry installed, no tracer provider set: the hooks stay off (the default
# provider would drop every span), until a provider is set.
WITHOUT_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from kyu_trio import _tracing
assert not _tracing.hooks().enabled
trace.set_tracer_provider(TracerProvider())
import time
time.sleep(1.1)  # an unset provider is looked for again at most once a second
assert _tracing.hooks().enabled
print("ok")
"""


def run_fresh(script: str) -> str:
    """Run ``script`` in a fresh interpreter (OpenTelemetry's provider is process-wide and
    can be set only once); return what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_installed_without_a_provider_the_hooks_are_off_until_one_is_set() -> None:
    assert run_fresh(WITHOUT_PROVIDER) == "ok"


ENQUEUE_WITHOUT_PROVIDER = """
from kyu_trio import _tracing

sent = []
real = _tracing.OtelTracing.sending


def spy(self, *args, **kwargs):
    sent.append(1)
    return real(self, *args, **kwargs)


_tracing.OtelTracing.sending = spy


class Producer:
    class config:
        queue_name = "q"

    @_tracing.traced_enqueue
    def enqueue_many(self, jobs, *, conn=None):
        return ["id"]


assert Producer().enqueue_many([("t", None)]) == ["id"]
assert sent == [], sent
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
import time

time.sleep(1.1)  # an unset provider is looked for again at most once a second
assert Producer().enqueue_many([("t", None)]) == ["id"]
assert sent == [1], sent
print("ok")
"""


def test_installed_without_a_provider_an_enqueue_makes_no_span() -> None:
    # Until 2026-11-26 the enqueue wrapper used the hooks whenever the extra was
    # installed: a non-recording span per enqueue call (tens of µs) with no provider.
    assert run_fresh(ENQUEUE_WITHOUT_PROVIDER) == "ok"
