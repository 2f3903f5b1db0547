"""Cancel a job while it runs: its handler is cancelled where it runs, its cleanup runs,
and it is recorded ``cancelled``, never retried.

docs/how-to/cancellation.md shows it region by region; tests/integration/
test_cancel_real.py runs it. One process serves the queue and cancels the job (the
cancel goes through PostgreSQL all the same, as it would from any other process or
host). It uses the servers of KYU_DSN / KYU_REDIS_URL (default: the local ones of
scripts/setup.sh) and the queue of KYU_QUEUE (default ``kyu:cancellation``), and exits 0
when every step did what it says.
"""

from __future__ import annotations

import os
import sys

import trio

from kyu_trio import Config, JobFailed, JobStatus, Queue

config = Config.from_env(
    dsn=os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test",
    redis_url=os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0",
    queue_name=os.environ.get("KYU_QUEUE") or "kyu:cancellation",
    metrics_port=0,
)
queue = Queue(config)
started = trio.Event()
cleaned_up = trio.Event()


# [handler]
@queue.handler("export_report")
async def export_report(report_id: int) -> str:
    started.set()
    try:
        for _page in range(1_000):
            await trio.sleep(1)  # every await is a point where a cancel can land
        return f"report {report_id} exported"
    finally:
        # Runs on a cancel too. Shield what must finish even though we are cancelled.
        with trio.CancelScope(shield=True):
            await trio.sleep(0.01)  # e.g. delete the half-written file
        print("cleanup ran")
        cleaned_up.set()


# [/handler]


async def main() -> int:
    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        job_id = await queue.enqueue("export_report", 7, max_retries=5)
        with trio.fail_after(30):
            await started.wait()
            # [cancel]
            cancelled = await queue.cancel_job(job_id)  # True: it was running, now it is not
            print(f"cancel_job -> {cancelled}")
            try:
                await queue.result(job_id)
            except JobFailed as exc:
                print(f"result() raised JobFailed: {exc}")
            # [/cancel]
            await cleaned_up.wait()
        await trio.sleep(1)  # a retry, were there one, would have started by now
        # [inspect]
        job = await queue.inspect(job_id)
        print(f"status: {job.status}, attempts: {[a.outcome for a in job.attempts]}")
        # [/inspect]
        queue.shutdown()
    ok = (
        cancelled
        and job.status is JobStatus.CANCELLED
        and [a.outcome for a in job.attempts] == ["cancelled"]
        and job.retry_count == 0
    )
    print("OK: the running job was cancelled" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
