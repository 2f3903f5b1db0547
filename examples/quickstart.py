"""kyu-trio quick start: four jobs, one worker process, a table of what happened.

Run it with ``./scripts/quickstart.sh`` (which also starts local PostgreSQL and Redis),
or directly with ``.venv/bin/python examples/quickstart.py``.

It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0`` unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the
queue ``kyu:quickstart`` unless KYU_QUEUE says otherwise. Jobs:

* ``greet``        succeeds at once;
* ``flaky``        fails on its first run and succeeds on the retry (1 s backoff);
* ``always_fails`` fails every time; with ``max_retries=1`` it runs twice, then is dead;
* ``report``       a plain ``def`` handler (runs in a thread), scheduled 2 s from now.

Exits 0 when every job ended as expected, 1 otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from kyu_trio import Config, EnqueueRequest, Job, JobStatus, Queue, current_job

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEADLINE = 30.0
FINAL = {JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED}

log = logging.getLogger("quickstart")


def make_queue() -> Queue:
    overrides: dict[str, Any] = {}
    if not os.environ.get("KYU_DSN"):
        overrides["dsn"] = DEFAULT_DSN
    if not os.environ.get("KYU_REDIS_URL"):
        overrides["redis_url"] = DEFAULT_REDIS_URL
    if not os.environ.get("KYU_QUEUE"):
        overrides["queue_name"] = "kyu:quickstart"
    config = Config.from_env(
        metrics_port=0,
        workers=4,
        scheduler_interval=0.5,  # promote due retries / scheduled jobs quickly
        max_backoff=2.0,  # retries wait 1 s, 2 s, 2 s, ...
        shutdown_grace=5.0,
        **overrides,
    )
    queue = Queue(config)

    @queue.handler("greet")
    async def greet(payload: str) -> None:
        name = json.loads(payload)["name"]
        await trio.sleep(0.1)  # async handlers can await anything trio-compatible
        log.info("hello, %s!", name)

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        job = current_job()
        if job.retry_count == 0:
            raise ConnectionError("upstream not ready yet (first try always fails)")
        log.info("flaky job %s succeeded on retry %d", job.id[-8:], job.retry_count)

    @queue.handler("always_fails")
    async def always_fails(payload: str) -> None:
        raise RuntimeError(f"cannot process {payload!r}")

    @queue.handler("report")
    def report(payload: str) -> None:
        # A plain `def` runs in a worker thread: fine for blocking code, but it cannot be
        # interrupted on timeout or shutdown. Prefer `async def` for cancellable work.
        time.sleep(0.1)
        log.info("report %s generated in a thread", payload)

    async def timing(job: Job, call_next: Callable[[], Awaitable[None]]) -> None:
        started = trio.current_time()
        try:
            await call_next()
        finally:
            log.info(
                "%s %s ran for %.3fs", job.job_type, job.id[-8:], trio.current_time() - started
            )

    queue.use(timing)
    return queue


async def wait_until_final(queue: Queue, ids: list[str]) -> list[Job]:
    """Poll the jobs until every one is in a final state, or DEADLINE passes."""
    jobs = [await queue.inspect(job_id) for job_id in ids]
    with trio.move_on_after(DEADLINE):
        while not all(job.status in FINAL for job in jobs):
            await trio.sleep(0.2)
            jobs = [await queue.inspect(job_id) for job_id in ids]
    return jobs


def print_table(jobs: list[Job]) -> None:
    rows = [("id", "job_type", "status", "retry_count", "error_message")]
    # Ids are time-ordered (their first digits are the creation time), so their last
    # eight digits are the ones that tell jobs apart.
    rows += [
        (job.id[-8:], job.job_type, job.status.value, str(job.retry_count), job.error_message or "")
        for job in jobs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    print()
    for n, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
        if n == 0:
            print("  ".join(["-" * w for w in widths] + ["-" * len(row[-1])]))
    print()


def check(jobs: dict[str, Job], scheduled_at: datetime) -> list[str]:
    """What did not go as expected (empty when all is well)."""
    problems = []

    def expect(name: str, status: JobStatus, retries: int) -> None:
        job = jobs[name]
        if job.status is not status or job.retry_count != retries:
            problems.append(
                f"{name}: expected {status.value} with retry_count {retries}, "
                f"got {job.status.value} with retry_count {job.retry_count}"
            )

    expect("greet", JobStatus.COMPLETED, 0)
    expect("flaky", JobStatus.COMPLETED, 1)
    expect("always_fails", JobStatus.DEAD, 1)
    expect("report", JobStatus.COMPLETED, 0)
    done_at = jobs["report"].completed_at
    if done_at is not None and done_at < scheduled_at:
        problems.append(f"report: completed at {done_at} before its scheduled time {scheduled_at}")
    return problems


async def main() -> int:
    queue = make_queue()
    async with queue:  # connects; creates the kyu_jobs table on first use
        scheduled_at = datetime.now(UTC) + timedelta(seconds=2)
        names = ["greet", "flaky", "always_fails", "report"]
        ids = await queue.enqueue_many(
            [
                EnqueueRequest("greet", json.dumps({"name": "trio"})),
                EnqueueRequest("flaky", "{}", max_retries=3),
                EnqueueRequest("always_fails", "payload-42", max_retries=1),
                EnqueueRequest("report", "daily", scheduled_at=scheduled_at, priority=5),
            ]
        )
        log.info("enqueued %d jobs; serving until they are all finished", len(ids))

        jobs: list[Job] = []
        async with trio.open_nursery() as nursery:

            async def serve(
                *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await queue.serve(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped early (Ctrl-C): stop waiting too

            await nursery.start(serve)
            jobs = await wait_until_final(queue, ids)
            queue.shutdown()  # graceful: serve() returns once running jobs are recorded

        if not jobs:  # interrupted before the first look
            jobs = [await queue.inspect(job_id) for job_id in ids]

        print_table(jobs)
        by_name = dict(zip(names, jobs, strict=True))
        if not all(job.status in FINAL for job in jobs):
            print(f"FAILED: not every job finished within {DEADLINE:.0f}s", file=sys.stderr)
            return 1
        problems = check(by_name, scheduled_at)
        for problem in problems:
            print(f"FAILED: {problem}", file=sys.stderr)
        if problems:
            return 1
        dead = await queue.dead_jobs(limit=5)
        log.info("dead_jobs() lists %d dead job(s) of this queue (newest first)", len(dead))
        print("OK: every job ended as expected")
        return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    sys.exit(trio.run(main))
