"""Snooze a job from its handler, and give a job type its own retry backoff.

docs/how-to/snooze-and-backoff.md shows it region by region;
tests/integration/test_snooze_real.py runs it. It uses the servers of KYU_DSN /
KYU_REDIS_URL (default: the local ones of scripts/setup.sh) and the queue of KYU_QUEUE
(default ``kyu:snooze``), and exits 0 when every step did what it says.
"""

from __future__ import annotations

import os
import sys

import trio

from kyu_trio import Config, Job, JobStatus, Queue, Snooze

config = Config.from_env(
    dsn=os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test",
    redis_url=os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0",
    queue_name=os.environ.get("KYU_QUEUE") or "kyu:snooze",
    metrics_port=0,
)
queue = Queue(config)
checks = 0
calls = 0


# [snooze]
@queue.handler("wait_for_export", max_snoozes=10)
async def wait_for_export(export_id: str) -> str:
    global checks
    checks += 1
    if checks < 3:  # not ready yet: ask again in 0.2 s, without spending a retry
        raise Snooze(0.2)
    return f"{export_id} downloaded after {checks} checks"


# [/snooze]


# [backoff]
def linear(attempt: int) -> float:
    # attempt counts the job's failures, this one included: 0.1 s, 0.2 s, 0.3 s, ...
    return 0.1 * attempt


@queue.handler("call_partner", backoff=linear)
async def call_partner(order_id: int) -> str:
    global calls
    calls += 1
    if calls <= 2:
        raise ConnectionError(f"partner API down (call {calls})")
    return f"order {order_id} sent"


# [/backoff]


async def until_final(job_id: str) -> Job:
    with trio.fail_after(30):
        while True:
            await queue.run_once()
            job = await queue.inspect(job_id)
            if job.status in (JobStatus.COMPLETED, JobStatus.DEAD):
                return job
            await trio.sleep(0.05)


async def main() -> int:
    async with queue:
        exported = await queue.enqueue("wait_for_export", "exp-1", max_retries=0)
        sent = await queue.enqueue("call_partner", 42, max_retries=3)
        export_job = await until_final(exported)
        partner_job = await until_final(sent)
    # [history]
    for job in (export_job, partner_job):
        print(f"{job.job_type}: {job.status}, retry_count={job.retry_count}, {job.result!r}")
        for a in job.attempts:
            print(f"  attempt {a.attempt}: {a.outcome} {a.error or ''}".rstrip())
    # [/history]
    ok = (
        export_job.status is JobStatus.COMPLETED
        and export_job.retry_count == 0  # two snoozes spent no retry (max_retries=0)
        and [a.outcome for a in export_job.attempts] == ["snoozed", "snoozed", "completed"]
        and partner_job.retry_count == 2
        and [a.outcome for a in partner_job.attempts] == ["failed", "failed", "completed"]
    )
    print("OK: snooze and backoff did what they say" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
