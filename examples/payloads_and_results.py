"""JSON payloads, handler results and attempt history, run from start to end.

docs/how-to/payloads-and-results.md shows it region by region;
tests/integration/test_payloads_results.py runs it. It uses the servers of KYU_DSN /
KYU_REDIS_URL (default: the local ones of scripts/setup.sh) and the queue of KYU_QUEUE
(default ``kyu:payloads``), and exits 0 when every step did what it says.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import trio

from kyu_trio import Config, InvalidJobError, JobStatus, Queue

config = Config.from_env(
    dsn=os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test",
    redis_url=os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0",
    queue_name=os.environ.get("KYU_QUEUE") or "kyu:payloads",
    metrics_port=0,
    max_backoff=0.1,  # retry at once: this is a demo
)
queue = Queue(config)
calls = 0


# [handlers]
@queue.handler("price_order")
async def price_order(order: dict[str, Any]) -> dict[str, Any]:
    # The payload arrives decoded: here the dict given to enqueue.
    total = sum(line["qty"] * line["unit_price"] for line in order["lines"])
    return {"order_id": order["id"], "total": round(total, 2)}  # stored as Job.result


@queue.handler("sync_account")
async def sync_account(account: str) -> int:
    global calls
    calls += 1
    if calls <= 2:
        raise ConnectionError(f"upstream timeout for {account} (call {calls})")
    return calls


# [/handlers]


async def main() -> int:
    async with queue:
        # [enqueue]
        order = {"id": 7, "lines": [{"sku": "tea", "qty": 2, "unit_price": 3.5}]}
        priced = await queue.enqueue("price_order", order)
        synced = await queue.enqueue("sync_account", "acct-42", max_retries=5)  # a str is fine
        try:
            await queue.enqueue("price_order", {"id": 8, "discount": math.nan})
        except InvalidJobError as exc:
            print(f"refused: {exc}")  # NaN is not JSON: nothing was written
        # [/enqueue]
        with trio.fail_after(30):
            while (await queue.inspect(synced)).status is not JobStatus.COMPLETED:
                await queue.run_once()
                await trio.sleep(0.1)
        # [inspect]
        job = await queue.inspect(priced)
        print(f"result: {job.result}")
        job = await queue.inspect(synced)
        print(f"result: {job.result}")
        for attempt in job.attempts:
            print(f"attempt {attempt.attempt}: {attempt.outcome} {attempt.error or ''}".rstrip())
        last_failure = job.attempts[-2].traceback or ""
        print(last_failure.splitlines()[-1])  # the traceback's last line: the exception
        # [/inspect]
        assert [a.outcome for a in job.attempts] == ["failed", "failed", "completed"]
        assert job.result == 3
        assert (await queue.inspect(priced)).result == {"order_id": 7, "total": 7.0}
        assert len(await queue.list_jobs()) == 2
    print("OK: payloads, results and attempts did what they say")
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
