"""kyu-trio run-once example: let an external scheduler (cron, a Kubernetes CronJob)
decide when work happens, instead of a long-running worker.

Each run connects, calls ``await queue.run_once()`` (one scheduler pass, one reaper pass,
then every job that is due now, with the configured workers), prints one summary line
and exits 0::

    run_once_cron: 5 runs (4 completed, 1 failed) in 0.4s; pending 5→0, failed 0→1, completed 0→4

The counts by status before and after come from `Queue.stats`; the runs are counted by a
middleware. Jobs that fall due later (a retry after its backoff, a scheduled job) are
left for the next run: a job that failed here is retried by a later invocation. Failing
jobs do not make the exit status non-zero; an unreachable server does (exit 1, one line
on stderr), so the scheduler can alert on it.

``--seed N`` first enqueues N demo jobs (``report`` jobs that succeed, and every fifth
one a ``flaky`` job that fails on its first run and succeeds on its retry), to see it do
something::

    .venv/bin/python examples/run_once_cron.py --seed 5
    sleep 2; .venv/bin/python examples/run_once_cron.py     # runs the retry

It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0`` unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the
queue ``kyu:cron`` unless KYU_QUEUE says otherwise (KYU_WORKERS sets the concurrency).

A crontab (every 5 minutes; ``flock -n`` skips a run while the previous one is still
going, which is tidy though not needed for correctness: claims are conditional, so two
overlapping runs never run one job twice; cron mails the output, or append
``>> /var/log/kyu-cron.log 2>&1`` to keep it)::

    KYU_DSN=postgresql://app@db.internal:5432/app
    KYU_REDIS_URL=redis://cache.internal:6379/0
    */5 * * * * cd /srv/app && flock -n /tmp/kyu.lock .venv/bin/python examples/run_once_cron.py

A Kubernetes CronJob (``concurrencyPolicy: Forbid`` plays the part of ``flock``)::

    apiVersion: batch/v1
    kind: CronJob
    metadata:
      name: kyu-run-once
    spec:
      schedule: "*/5 * * * *"
      concurrencyPolicy: Forbid
      successfulJobsHistoryLimit: 3
      failedJobsHistoryLimit: 3
      jobTemplate:
        spec:
          backoffLimit: 0
          activeDeadlineSeconds: 3600
          template:
            spec:
              restartPolicy: Never
              containers:
                - name: run-once
                  image: registry.example.com/app:latest
                  command: ["python", "examples/run_once_cron.py"]
                  env:
                    - name: KYU_DSN
                      valueFrom: {secretKeyRef: {name: kyu, key: dsn}}
                    - name: KYU_REDIS_URL
                      value: redis://redis:6379/0
                    - name: KYU_WORKERS
                      value: "10"

The command line does the same for any queue of yours, with a progress bar:
``kyu-trio run-once app.tasks:queue``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from kyu_trio import (
    Config,
    EnqueueRequest,
    Job,
    JobStatus,
    KyuConnectionError,
    Queue,
    Stats,
    current_job,
)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "kyu:cron"

log = logging.getLogger("run_once_cron")


class CountRuns:
    """Middleware counting the runs of this invocation by outcome."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    async def __call__(self, job: Job, call_next: Callable[[], Awaitable[None]]) -> None:
        try:
            await call_next()
        except Exception:
            # A failure: retried later if it has retries left, else dead.
            left = job.max_retries - job.retry_count
            self.outcomes["failed" if left > 0 else "dead"] += 1
            raise
        self.outcomes["completed"] += 1


def make_queue() -> tuple[Queue, CountRuns]:
    overrides: dict[str, Any] = {"metrics_port": 0}
    if not os.environ.get("KYU_DSN"):
        overrides["dsn"] = DEFAULT_DSN
    if not os.environ.get("KYU_REDIS_URL"):
        overrides["redis_url"] = DEFAULT_REDIS_URL
    if not os.environ.get("KYU_QUEUE"):
        overrides["queue_name"] = DEFAULT_QUEUE
    queue = Queue(Config.from_env(**overrides))

    @queue.handler("report")
    async def report(payload: str) -> None:
        await trio.sleep(0.05)
        log.info("report %s done", payload)

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        if current_job().retry_count == 0:
            raise ConnectionError("upstream not ready (the first try always fails)")

    counter = CountRuns()
    queue.use(counter)
    return queue, counter


def summary(before: Stats, after: Stats, outcomes: Counter[str], seconds: float) -> str:
    """``run_once_cron: 5 runs (4 completed, 1 failed) in 0.4s; pending 5→0, ...``"""
    total = sum(outcomes.values())
    runs = f"{total} run{'' if total == 1 else 's'}"
    if total:
        runs += " (" + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) + ")"
    changes = []
    for status in JobStatus:
        a, b = before.counts.get(status, 0), after.counts.get(status, 0)
        if a or b:
            changes.append(f"{status.value} {a}→{b}" if a != b else f"{status.value} {a}")
    return f"run_once_cron: {runs} in {seconds:.1f}s; {', '.join(changes) or 'no jobs'}"


async def main(seed: int) -> int:
    queue, counter = make_queue()
    started = time.monotonic()
    async with queue:
        if seed:
            await queue.enqueue_many(
                EnqueueRequest("flaky" if n % 5 == 4 else "report", f"#{n}", max_retries=3)
                for n in range(seed)
            )
        before = await queue.stats()
        await queue.run_once()
        after = await queue.stats()
    print(summary(before, after, counter.outcomes, time.monotonic() - started))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="first enqueue N demo jobs"
    )
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    try:
        sys.exit(trio.run(main, arguments.seed))
    except KyuConnectionError as exc:
        print(f"run_once_cron: error: {exc}", file=sys.stderr)
        sys.exit(1)
