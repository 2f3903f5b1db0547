"""What tracing (the ``otel`` extra) costs on the hot path (issue 14)::

    .venv/bin/python -m bench.tracing --rounds 5 --jobs 20000 --real-jobs 5000

Three modes, each measured in its own subprocess (OpenTelemetry's global tracer
provider can be set once per process):

- ``off``: ``opentelemetry`` cannot be imported, as without the extra: every hook is
  kyu-trio's no-op;
- ``api``: the extra installed, no SDK configured: OpenTelemetry's own no-op spans;
- ``sdk``: an SDK tracer provider recording every span, with a BatchSpanProcessor and
  an exporter that drops them (what an application exporting its traces pays, less
  the export itself).

(a) The hooks alone, per job, in nanoseconds: what a worker calls around each run
(`run_started` + `run_ended`) and what validating each enqueued job reads
(`enqueue_context`), plus the wrapper around one enqueue call with no job in it.
(b) Processed jobs/s: ``--jobs`` no-op jobs enqueued in one batch, then worked off by
``run_once`` (8 workers) on the in-memory adapters, where the hooks weigh the most;
and with ``--real-jobs`` > 0, the same on PostgreSQL and Redis (a scratch database
created and dropped here; 50 workers). Rounds interleave the modes
(off, api, sdk | sdk, api, off | ...); each figure is the median over the rounds, and
the ratios are to ``off``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import timeit
import uuid
from datetime import UTC, datetime
from typing import Any

from ._common import DSN, REDIS_URL, ROOT

MODES = ("off", "api", "sdk")

#: Makes ``opentelemetry`` unimportable in this process, as without the extra.
_BLOCK = """
import sys
from importlib.abc import MetaPathFinder

class _Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def set_mode(mode: str) -> None:
    if mode == "off":
        exec(_BLOCK, {})
        return
    if mode == "sdk":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)


def hooks_ns(number: int) -> dict[str, float]:
    """Nanoseconds per call of the hooks as the hot path makes them."""
    from kyu_trio import _tracing
    from kyu_trio._job import Job, JobStatus
    from kyu_trio._runtime._outcomes import Kind, Outcome

    now = datetime.now(UTC)
    job = Job(
        id=str(uuid.uuid4()),
        queue="kyu:bench",
        job_type="noop",
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
        attempt=1,
        trace_context='{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}',
    )
    outcome = Outcome(Kind.COMPLETE, job, 0.001)

    def run() -> None:
        _tracing.hooks().run_started(job)
        _tracing.hooks().run_ended(outcome)

    class Producer:
        class config:
            queue_name = "kyu:bench"

        @_tracing.traced_enqueue
        def enqueue_many(self, jobs: list[Any], *, conn: Any = None) -> list[str]:
            return ["id"]

    producer = Producer()
    items = [("noop", None)]

    def best(fn: Any) -> float:
        return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9

    return {
        "run_hooks_ns": best(run),
        "enqueue_context_ns": best(_tracing.enqueue_context),
        "enqueue_wrapper_ns": best(lambda: producer.enqueue_many(items)),
        "enabled": float(_tracing.hooks().enabled),
    }


async def processed_per_second(jobs: int, real: bool) -> float:
    import trio

    from kyu_trio import Config, Queue
    from kyu_trio.testing import memory_queue

    if real:
        name = f"kyu:bench-tracing-{uuid.uuid4().hex[:8]}"
        queue = Queue(
            Config(dsn=DSN, redis_url=REDIS_URL, queue_name=name, metrics_port=0, workers=50)
        )
    else:
        queue = memory_queue(Config(workers=8, metrics_port=0))

    @queue.handler("noop")
    async def noop(payload: None) -> None:
        return None

    async with queue:
        for start in range(0, jobs, 5000):
            await queue.enqueue_many([("noop", None)] * min(5000, jobs - start))
        began = trio.current_time()
        summary = await queue.run_once()
        elapsed = trio.current_time() - began
    assert summary.completed == jobs, summary
    if real:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.delete(name, f"{name}:~epoch")
        client.close()
    return jobs / elapsed


def child(mode: str, jobs: int, real_jobs: int, dsn: str) -> dict[str, float]:
    """One mode's figures, in this (fresh) process."""
    import trio

    global DSN
    DSN = dsn
    set_mode(mode)
    # Fewer calls when they make spans: the figures are per call either way.
    figures = hooks_ns(200_000 if mode == "off" else 10_000)
    figures["memory_jobs_per_s"] = trio.run(processed_per_second, jobs, False)
    if real_jobs:
        figures["real_jobs_per_s"] = trio.run(processed_per_second, real_jobs, True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--real-jobs", type=int, default=5_000)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", default=DSN, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.jobs, args.real_jobs, args.dsn)))
        return

    import psycopg

    scratch = f"kyu_bench_tracing_{uuid.uuid4().hex[:8]}"
    if args.real_jobs:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{scratch}"')
    dsn = DSN.rsplit("/", 1)[0] + "/" + scratch
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else reversed(MODES):
                argv = [sys.executable, "-m", "bench.tracing", "--child", mode]
                argv += ["--jobs", str(args.jobs), "--real-jobs", str(args.real_jobs)]
                argv += ["--dsn", dsn]
                started = time.monotonic()
                done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=True)
                results[mode].append(json.loads(done.stdout.splitlines()[-1]))
                print(f"round {r + 1} {mode}: {time.monotonic() - started:.1f}s", flush=True)
    finally:
        if args.real_jobs:
            with psycopg.connect(DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')

    keys = [k for k in results["off"][0] if k != "enabled"]
    medians = {m: {k: statistics.median(x[k] for x in results[m]) for k in keys} for m in MODES}
    print(f"\n{args.rounds} rounds, medians (ratio to off)")
    print(f"{'figure':<22}" + "".join(f"{m:>22}" for m in MODES))
    for k in keys:
        row = f"{k:<22}"
        for m in MODES:
            value, base = medians[m][k], medians["off"][k]
            row += f"{value:>14,.0f} ({value / base:4.2f})"
        print(row)


if __name__ == "__main__":
    main()
