"""kyu-trio load generator: a worker with metrics on, fed a steady mixed workload.

It is what the docker-compose stack runs (see the README's "Observability" section), so
that Prometheus and the Grafana dashboard have live data to show. Run it locally with::

    .venv/bin/python examples/load.py --rate 20            # until Ctrl-C / SIGTERM
    .venv/bin/python examples/load.py --rate 50 --duration 60

then look at http://127.0.0.1:9090/metrics. In one nursery it serves the queue (workers,
scheduler, reaper, metrics server) and runs an enqueuer that adds ``--rate`` jobs per
second of these kinds:

* ``ok``       succeeds after a random short sleep (5-250 ms);
* ``flaky``    fails on its first run, succeeds on the retry;
* ``broken``   always fails; ``max_retries=1``, so it runs twice and ends ``dead``;
* ``report``   succeeds, but is scheduled a few seconds ahead (the scheduler promotes it);
* ``slow``     succeeds after a few seconds (shows up in the running gauge and the p99);
* ``legacy``   a type no handler is registered for (``job_type="unknown"`` in metrics;
               ``max_retries=0``, so it is dead at once).

Settings come from the environment (``Config.from_env``: ``KYU_DSN``, ``KYU_REDIS_URL``,
``KYU_WORKERS``, ``KYU_QUEUE``, ``KYU_METRICS_PORT``) plus ``KYU_METRICS_HOST``
(default 127.0.0.1; the container sets 0.0.0.0). Without ``KYU_DSN``/``KYU_REDIS_URL`` it
uses the local servers of ``scripts/setup.sh``, and the queue ``kyu:load``.

It stops on SIGINT/SIGTERM (a graceful stop, as `Queue.serve` does) or after
``--duration`` seconds. Every minute it purges finished jobs (completed, cancelled,
dead) older than ``--keep-minutes`` (60), so the ``kyu_jobs`` table stays small: at
20 jobs/s it would otherwise grow by 1.7 million rows a day.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import attrs
import trio

from kyu_trio import (
    Config,
    EnqueueRequest,
    JobStatus,
    KyuConnectionError,
    KyuError,
    Queue,
    current_job,
)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "kyu:load"
DEFAULT_WORKERS = 16
#: The enqueuer adds jobs in batches at most this often (one INSERT per batch).
MAX_TICK = 0.1
#: After a stall (an outage), at most this many seconds of backlog are enqueued at once.
MAX_CATCH_UP = 5.0
FINISHED = (JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.DEAD)

log = logging.getLogger("kyu_load")


@attrs.frozen
class Mix:
    """What the enqueuer produces: relative weights of each kind, and time ranges in s."""

    weights: dict[str, float] = attrs.field(
        factory=lambda: {
            "ok": 0.60,
            "flaky": 0.12,
            "broken": 0.05,
            "report": 0.15,
            "slow": 0.03,
            "legacy": 0.01,
        }
    )
    ok_sleep: tuple[float, float] = (0.005, 0.25)
    slow_sleep: tuple[float, float] = (2.0, 6.0)
    schedule_ahead: tuple[float, float] = (2.0, 8.0)


def register_handlers(queue: Queue) -> None:
    """The handlers of the mix. Each sleeps for the ``sleep`` given in its payload."""

    async def sleep_from(payload: str) -> None:
        await trio.sleep(float(json.loads(payload).get("sleep", 0.0)))

    @queue.handler("ok")
    async def ok(payload: str) -> None:
        await sleep_from(payload)

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        await sleep_from(payload)
        if current_job().retry_count == 0:
            raise ConnectionError("upstream not ready (the first try always fails)")

    @queue.handler("broken")
    async def broken(payload: str) -> None:
        await sleep_from(payload)
        raise ValueError("this job can never succeed")

    @queue.handler("report")
    async def report(payload: str) -> None:
        await sleep_from(payload)

    @queue.handler("slow")
    async def slow(payload: str) -> None:
        await sleep_from(payload)

    # "legacy" is left unregistered on purpose: such jobs fail with UnknownJobType.


def make_request(rng: random.Random, mix: Mix, seq: int) -> EnqueueRequest:
    """One random job of the mix."""
    kind = rng.choices(list(mix.weights), weights=list(mix.weights.values()))[0]
    sleep = rng.uniform(*mix.ok_sleep)
    extra: dict[str, Any] = {}
    if kind == "slow":
        sleep = rng.uniform(*mix.slow_sleep)
    elif kind in ("flaky", "broken", "legacy"):
        sleep = rng.uniform(0.001, 0.02)
    if kind == "broken":
        extra["max_retries"] = 1
    elif kind == "legacy":
        extra["max_retries"] = 0
    elif kind == "report":
        ahead = rng.uniform(*mix.schedule_ahead)
        extra["scheduled_at"] = datetime.now(UTC) + timedelta(seconds=ahead)
    payload = json.dumps({"n": seq, "sleep": round(sleep, 4)})
    return EnqueueRequest(kind, payload, priority=rng.choice((0, 0, 0, 5)), **extra)


async def produce(
    queue: Queue,
    rate: float,
    mix: Mix | None = None,
    *,
    seed: int | None = None,
    produced: Counter[str] | None = None,
) -> None:
    """Enqueue ``rate`` jobs per second until cancelled, in batches of at most ``MAX_TICK``
    seconds' worth. ``produced`` (if given) counts the jobs enqueued by kind."""
    mix = mix if mix is not None else Mix()
    rng = random.Random(seed)
    tick = min(MAX_TICK, 1.0 / rate)
    credit, seq, failing = 0.0, 0, False
    last = deadline = trio.current_time()
    while True:
        deadline += tick
        await trio.sleep_until(deadline)
        now = trio.current_time()
        credit = min(credit + (now - last) * rate, rate * MAX_CATCH_UP)
        last = now
        deadline = max(deadline, now - tick)  # after a stall, do not race to catch up
        count = int(credit)
        if not count:
            continue
        batch = [make_request(rng, mix, seq + i) for i in range(count)]
        try:
            await queue.enqueue_many(batch)
        except KyuConnectionError as exc:
            if not failing:
                log.warning("cannot enqueue: %s (retrying every second)", exc)
            failing = True
            await trio.sleep(1.0)
            continue
        if failing:
            log.warning("enqueueing again")
            failing = False
        credit -= count
        seq += count
        if produced is not None:
            produced.update(request.job_type for request in batch)


async def purge_forever(queue: Queue, keep: timedelta, every: float = 60.0) -> None:
    """Delete finished jobs older than ``keep`` now and then, so the table stays small."""
    while True:
        try:
            deleted = await queue.purge(keep, statuses=FINISHED)
        except KyuError as exc:
            log.warning("purge failed: %s", exc)
        else:
            if deleted:
                log.info("purged %d finished jobs older than %s", deleted, keep)
        await trio.sleep(every)


def make_queue(workers: int | None = None, shutdown_grace: float = 10.0) -> Queue:
    overrides: dict[str, Any] = {
        "metrics_host": os.environ.get("KYU_METRICS_HOST") or "127.0.0.1",
        "scheduler_interval": 1.0,  # scheduled jobs and retries run about on time
        "max_backoff": 5.0,  # retries wait 1 s, 2 s, 4 s, 5 s, ...
        "metrics_sample_interval": 2.0,  # depth, lag and counts by status
        "shutdown_grace": shutdown_grace,
    }
    if not os.environ.get("KYU_DSN"):
        overrides["dsn"] = DEFAULT_DSN
    if not os.environ.get("KYU_REDIS_URL"):
        overrides["redis_url"] = DEFAULT_REDIS_URL
    if not os.environ.get("KYU_QUEUE"):
        overrides["queue_name"] = DEFAULT_QUEUE
    if workers is not None:
        overrides["workers"] = workers
    elif not os.environ.get("KYU_WORKERS"):
        overrides["workers"] = DEFAULT_WORKERS
    # KYU_METRICS_PORT (default 9090) is read by Config.from_env itself.
    queue = Queue(Config.from_env(**overrides))
    register_handlers(queue)
    return queue


class HideJobEvents(logging.Filter):
    """Drops kyu-trio's per-job lines (those carrying ``kyu_event``): under load they are
    several a second. ``--log-jobs`` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not hasattr(record, "kyu_event")


async def report_progress(produced: Counter[str], every: float) -> None:
    total = 0
    while True:
        await trio.sleep(every)
        now = sum(produced.values())
        log.info(
            "enqueued %d jobs in the last %.0fs (%d in all: %s)",
            now - total,
            every,
            now,
            ", ".join(f"{k}={v}" for k, v in sorted(produced.items())),
        )
        total = now


async def main(args: argparse.Namespace) -> int:
    queue = make_queue(args.workers, args.shutdown_grace)
    produced: Counter[str] = Counter()
    # Connect (and migrate) first; close after serve() has returned.
    async with queue, trio.open_nursery() as nursery:

        async def serve(
            *,
            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        ) -> None:
            await queue.serve(task_status=task_status)
            # serve() returned (SIGINT/SIGTERM or shutdown()): stop the producers too.
            nursery.cancel_scope.cancel()

        await nursery.start(serve)
        log.info(
            "serving %r with %d workers; metrics on http://%s:%s/metrics; enqueueing %g jobs/s %s",
            queue.config.queue_name,
            queue.config.workers,
            queue.config.metrics_host,
            queue.metrics_port,
            args.rate,
            f"for {args.duration:g}s" if args.duration else "until SIGINT/SIGTERM",
        )
        async with trio.open_nursery() as producers:
            producers.start_soon(
                partial(produce, queue, args.rate, seed=args.seed, produced=produced)
            )
            producers.start_soon(report_progress, produced, args.report_every)
            if args.keep_minutes > 0:
                producers.start_soon(purge_forever, queue, timedelta(minutes=args.keep_minutes))
            if args.duration:
                await trio.sleep(args.duration)
                producers.cancel_scope.cancel()
        queue.shutdown()  # --duration is over: running jobs get shutdown_grace to finish
    log.info(
        "stopped after enqueueing %d jobs (%s)",
        sum(produced.values()),
        ", ".join(f"{k}={v}" for k, v in sorted(produced.items())),
    )
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rate", type=float, default=20.0, help="jobs enqueued per second (default 20)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until a signal)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"concurrent jobs (default: KYU_WORKERS, else {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on stop, running jobs get this long to finish, then are requeued (default 10)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the job mix")
    parser.add_argument(
        "--report-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="log a progress line this often (default 30)",
    )
    parser.add_argument(
        "--keep-minutes",
        type=float,
        default=60.0,
        metavar="MINUTES",
        help="purge finished jobs older than this every minute; 0 keeps everything (default 60)",
    )
    parser.add_argument(
        "--log-jobs",
        action="store_true",
        help="also log kyu-trio's per-job lines (failures, dead jobs)",
    )
    args = parser.parse_args(argv)
    if not args.rate > 0:
        parser.error("--rate must be > 0")
    if args.duration is not None and not args.duration > 0:
        parser.error("--duration must be > 0")
    if not args.shutdown_grace >= 0:
        parser.error("--shutdown-grace must be >= 0")
    if not args.report_every > 0:
        parser.error("--report-every must be > 0")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    if not arguments.log_jobs:
        for handler in logging.getLogger().handlers:
            handler.addFilter(HideJobEvents())
    sys.exit(trio.run(main, arguments))
