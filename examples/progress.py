"""Report the progress of long jobs, and read it while they run.

docs/how-to/progress.md shows it region by region; tests/integration/test_progress_real.py
runs it. It uses the servers of KYU_DSN / KYU_REDIS_URL (default: the local ones of
scripts/setup.sh) and the queue of KYU_QUEUE (default ``kyu:progress``), and exits 0
when every step did what it says.
"""

from __future__ import annotations

import hashlib
import os
import sys

import trio

from kyu_trio import Config, Job, JobStatus, Queue, current_job

config = Config.from_env(
    dsn=os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test",
    redis_url=os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0",
    queue_name=os.environ.get("KYU_QUEUE") or "kyu:progress",
    metrics_port=0,
)
queue = Queue(config)


# [async]
@queue.handler("import_rows")
async def import_rows(total: int) -> str:
    for done in range(1, total + 1):
        await trio.sleep(0.001)  # stands for saving one row
        # As often as you like: the worker writes the latest value at most every 0.5 s.
        current_job().set_progress({"done": done, "total": total})
    return f"{total} rows imported"


# [/async]


# [thread]
@queue.handler("checksum")
def checksum(blocks: int) -> str:  # a plain def: runs in a thread
    digest = hashlib.sha256()
    for i in range(blocks):
        digest.update(bytes(64 * 1024))
        current_job().set_progress(round(100 * (i + 1) / blocks))  # a percentage
    return digest.hexdigest()[:16]


# [/thread]


# [watch]
async def watch(job_id: str) -> Job:
    """Print the job's progress each time it changes, until the job has finished."""
    last = None
    while True:
        job = await queue.inspect(job_id)
        if job.progress != last:
            print(f"{job.job_type}: {job.progress}")
            last = job.progress
        if job.status in (JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED):
            return job
        await trio.sleep(0.2)


# [/watch]


async def main() -> int:
    async with queue:
        imported = await queue.enqueue("import_rows", 1000)
        summed = await queue.enqueue("checksum", 400)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            with trio.fail_after(60):
                jobs = [await watch(imported), await watch(summed)]
            queue.shutdown()
    for job in jobs:
        print(f"{job.job_type}: {job.status}, progress={job.progress}, result={job.result!r}")
    ok = [(j.status, j.progress) for j in jobs] == [
        (JobStatus.COMPLETED, {"done": 1000, "total": 1000}),
        (JobStatus.COMPLETED, 100),
    ]
    print("OK: progress was reported, and its last value kept" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
