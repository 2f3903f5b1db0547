"""A tour of the Queue API, run from start to end: handlers, middleware, enqueue options,
looking at jobs and fixing them, and run_once.

docs/how-to/use-the-api.md shows it region by region; tests/integration/test_examples.py
runs it. It uses the servers of KYU_DSN / KYU_REDIS_URL (default: the local ones of
scripts/setup.sh) and the queue of KYU_QUEUE (default ``kyu:tour``), and exits 0 when
every step did what it says.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import trio

from kyu_trio import Config, EnqueueRequest, Job, JobStatus, Queue, current_job

config = Config.from_env(
    dsn=os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test",
    redis_url=os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0",
    queue_name=os.environ.get("KYU_QUEUE") or "kyu:tour",
    metrics_port=0,
)
seen: list[str] = []

# [handlers]
queue = Queue(config)


@queue.handler("send_email")  # async def: runs in a worker task, cancellable
async def send_email(payload: str) -> None:
    data = json.loads(payload)
    job = current_job()  # the Job being run
    seen.append(f"try {job.retry_count + 1} of {job.job_type}: mail to {data['to']}")


def resize(payload: str) -> None:  # plain def: runs in a thread (cannot be interrupted)
    time.sleep(0.01)
    seen.append(f"resized {payload}")


queue.register("resize", resize)


@queue.handler("boom")
async def boom(payload: str) -> None:
    raise RuntimeError(f"cannot process {payload!r}")  # a failure: retried, then dead


# [/handlers]


# [middleware]
async def log_jobs(job: Job, call_next: Callable[[], Awaitable[None]]) -> None:
    seen.append(f"start {job.job_type}")
    try:
        await call_next()  # the handler's exception (if any) comes out here
    finally:
        seen.append(f"done {job.job_type}")


queue.use(log_jobs)  # the first registered middleware is the outermost
# [/middleware]


async def main() -> int:
    # [enqueue]
    async with queue:  # connect (and migrate); close on exit
        job_id = await queue.enqueue("send_email", json.dumps({"to": "a@b.c"}), priority=5)
        later = await queue.enqueue(
            "send_email",
            json.dumps({"to": "later@b.c"}),
            scheduled_at=datetime.now(UTC) + timedelta(minutes=5),  # timezone-aware
            max_retries=5,  # 6 runs in all
            job_timeout=10.0,  # seconds one run may take
        )
        ids = await queue.enqueue_many(
            [
                ("resize", "photo-1.jpg"),
                EnqueueRequest("boom", "payload-42", max_retries=0),
            ]
        )
        # [/enqueue]

        # [inspect]
        assert (await queue.inspect(later)).status is JobStatus.SCHEDULED
        assert await queue.cancel_job(later)  # True: it had not started
        await queue.run_once()  # everything due now, then return
        done = await queue.inspect(job_id)
        assert done.status is JobStatus.COMPLETED, done
        dead = await queue.dead_jobs(limit=10)
        assert [job.id for job in dead] == [ids[1]], dead
        print(f"dead: {dead[0].job_type}: {dead[0].error_message}")
        assert await queue.retry_job(ids[1])  # back to pending, retry count reset
        stats = await queue.stats()
        print("counts:", {status.value: n for status, n in stats.counts.items() if n})
        # [/inspect]

        assert [job.id for job in await queue.list_jobs(status="cancelled")] == [later]
        assert await queue.purge(timedelta(0)) >= 2  # completed and cancelled jobs
    for line in seen:
        print(line)
    expected = {
        "try 1 of send_email: mail to a@b.c",
        "resized photo-1.jpg",
        "start boom",
        "done boom",
    }
    if not expected <= set(seen):
        print(f"FAILED: missing {sorted(expected - set(seen))}", file=sys.stderr)
        return 1
    print("OK: the tour ran")
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
