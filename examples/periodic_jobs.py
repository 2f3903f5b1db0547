"""Periodic jobs: a cron entry enqueues one job per tick while the queue is served.

docs/how-to/periodic-jobs.md shows it region by region;
tests/integration/test_cron_real.py runs it. It uses the servers of KYU_DSN /
KYU_REDIS_URL (default: the local ones of scripts/setup.sh) and the queue of KYU_QUEUE
(default ``kyu:periodic``), serves for about seven seconds, lists the queue's entries as
``kyu-trio cron`` does, and exits 0 when every tick ran once.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from datetime import UTC, datetime

import trio

from kyu_trio import Config, Queue, current_job

config = Config.from_env(
    dsn=os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test",
    redis_url=os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0",
    queue_name=os.environ.get("KYU_QUEUE") or "kyu:periodic",
    metrics_port=0,
)
queue = Queue(config)
ran: Counter[datetime] = Counter()

# [cron]
# Every day at 03:00 in Paris, daylight saving included.
queue.cron("0 3 * * *", "nightly_report", {"full": True}, timezone="Europe/Paris")

# A sixth field, first, counts seconds: every 2 seconds, with a name of its own.
queue.cron("*/2 * * * * *", "heartbeat", name="heartbeat-2s", missed="skip")


@queue.handler("heartbeat")
async def heartbeat(payload: None) -> None:
    tick = current_job().scheduled_at  # the tick the job was enqueued for
    ran[tick] += 1
    print(f"heartbeat of {tick:%H:%M:%S}")


# [/cron]


# [periodic]
@queue.periodic("@hourly", "rotate_logs", {"keep": 24})
async def rotate_logs(payload: dict[str, int]) -> None:
    print(f"rotating logs, keeping {payload['keep']}")


# [/periodic]


async def main() -> int:
    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        await trio.sleep(7)
        queue.shutdown()
    # [list]
    async with queue:
        now = datetime.now(UTC)
        for entry in await queue.cron_entries():
            print(f"{entry.name}: {entry.schedule} ({entry.timezone}), next {entry.next_run(now)}")
    # [/list]
    doubled = [tick for tick, n in ran.items() if n > 1]
    if len(ran) < 2 or doubled:
        print(f"FAILED: {len(ran)} ticks ran, doubled: {doubled}", file=sys.stderr)
        return 1
    print(f"OK: {len(ran)} heartbeats, one per tick")
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
