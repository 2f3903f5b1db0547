"""Several queues in one process: `serve_queues` serves an ``emails`` queue and a
``reports`` queue, each with its own workers, and one metrics endpoint for both::

    .venv/bin/python examples/several_queues.py

docs/how-to/several-queues.md shows it; tests/integration/test_serve_queues.py runs it.
It uses the servers of KYU_DSN / KYU_REDIS_URL (default: the local ones of
scripts/setup.sh), queue names starting with KYU_QUEUE (default ``kyu``) and the metrics
port KYU_METRICS_PORT (default 9090). It exits 0 once /metrics shows every job of both
queues completed. From the command line the same queues are served by
``kyu-trio worker several_queues:emails several_queues:reports`` (from ``examples/``).
"""

from __future__ import annotations

import os
import sys
from functools import partial

import trio
from prometheus_client.parser import text_string_to_metric_families

from kyu_trio import Config, Queue, serve_queues

PREFIX = os.environ.get("KYU_QUEUE") or "kyu"
DSN = os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0"
PORT = int(os.environ.get("KYU_METRICS_PORT") or 9090)

# [queues]
# Each queue has its own Config: many workers for quick jobs, few for heavy ones. They
# may use the same servers (as here) or different ones.
emails = Queue(Config(queue_name=f"{PREFIX}:emails", workers=20, dsn=DSN, redis_url=REDIS_URL))
reports = Queue(Config(queue_name=f"{PREFIX}:reports", workers=2, dsn=DSN, redis_url=REDIS_URL))


@emails.handler("send")
async def send(payload: str) -> None:
    await trio.sleep(0.1)  # stands in for an SMTP call


@reports.handler("build")
async def build(payload: str) -> None:
    await trio.sleep(0.5)  # stands in for a heavy query


# [/queues]


async def completed(port: int) -> dict[str, float]:
    """``kyu_jobs_processed_total{status="completed"}`` of each queue, from /metrics."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    text = data.partition(b"\r\n\r\n")[2].decode()
    return {
        s.labels["queue"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kyu_jobs_processed_total" and s.labels["status"] == "completed"
    }


async def main() -> int:
    wanted = {emails.config.queue_name: 10.0, reports.config.queue_name: 3.0}
    seen: dict[str, float] = {}
    async with emails, reports:
        await emails.enqueue_many([("send", f"user{i}@example.com") for i in range(10)])
        await reports.enqueue_many([("build", day) for day in ("mon", "tue", "wed")])
        # [serve]
        async with trio.open_nursery() as nursery:
            # Both queues, one /metrics, /healthz and /readyz on PORT, one signal watcher.
            await nursery.start(partial(serve_queues, emails, reports, metrics_port=PORT))
            with trio.move_on_after(30):
                while True:  # the outcomes are recorded shortly after the handlers return
                    seen = await completed(PORT)
                    if seen == wanted:
                        break
                    await trio.sleep(0.2)
            print("completed, as /metrics shows:", seen)
            emails.shutdown()  # one queue's shutdown() (or SIGTERM) stops them all
        # [/serve]
    if seen != wanted:
        print(f"FAILED: expected {wanted}", file=sys.stderr)
        return 1
    print("OK: both queues served by one process")
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
