"""Keep finished jobs for a while, then let the queue's maintenance leader delete them.

docs/how-to/retention.md shows it region by region;
tests/integration/test_retention_real.py runs it. It uses the servers of KYU_DSN /
KYU_REDIS_URL (default: the local ones of scripts/setup.sh) and the queue of KYU_QUEUE
(default ``kyu:retention``), and exits 0 when every step did what it says.
"""

from __future__ import annotations

import os
import sys
import time

import trio

from kyu_trio import Config, Job, JobNotFound, JobStatus, Queue

# [config]
config = Config.from_env(
    dsn=os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test",
    redis_url=os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0",
    queue_name=os.environ.get("KYU_QUEUE") or "kyu:retention",
    metrics_port=0,
    retention_completed=2.0,  # seconds; a demo value: the default is 7 days
    retention_dead=None,  # keep dead jobs until someone has looked at them
    reaper_interval=0.5,  # the leader prunes this often (the default: every 60 s)
)
# [/config]
queue = Queue(config)


@queue.handler("send_receipt")
async def send_receipt(order: int) -> str:
    return f"receipt for order {order} sent"


@queue.handler("charge_card")
async def charge_card(order: int) -> None:
    raise ValueError(f"card declined for order {order}")


async def finished(job_id: str) -> Job:
    while True:
        job = await queue.inspect(job_id)
        if job.status in (JobStatus.COMPLETED, JobStatus.DEAD):
            return job
        await trio.sleep(0.05)


async def pruned(job: Job) -> float:
    """Wait until the job is gone; return for how long it was kept after it finished."""
    assert job.completed_at is not None
    while True:
        try:
            await queue.inspect(job.id)
        except JobNotFound:
            return time.time() - job.completed_at.timestamp()
        await trio.sleep(0.1)


async def main() -> int:
    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        receipt = await queue.enqueue("send_receipt", 42)
        charge = await queue.enqueue("charge_card", 43, max_retries=0)
        with trio.fail_after(30):
            completed = await finished(receipt)
            print(f"send_receipt ended {completed.status}: {completed.result}")
            failed = await finished(charge)
            print(f"charge_card ended {failed.status}: {failed.error_message}")
            # [pruned]
            kept = await pruned(completed)
            print(f"the completed job was deleted {kept:.1f} s after it finished")
            dead = await queue.inspect(charge)  # retention_dead=None: kept
            print(f"the dead job is kept: {dead.status}")
            count = queue.metrics.registry.get_sample_value(
                "kyu_jobs_pruned_total", {"queue": config.queue_name, "status": "completed"}
            )
            print(f"kyu_jobs_pruned_total{{status='completed'}} = {count}")
            # [/pruned]
        queue.shutdown()
    ok = 2.0 <= kept < 10 and dead.status is JobStatus.DEAD and count == 1
    print(
        "OK: finished jobs were pruned past their retention"
        if ok
        else "FAILED: pruning did not go as expected"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
