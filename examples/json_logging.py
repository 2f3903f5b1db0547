"""Job events as JSON lines: a logging formatter that emits the ``extra=`` fields that
kyu-trio puts on each job's log record (docs/how-to/operate.md includes it).

Runs one job that succeeds and one that dies, with the logger at DEBUG, and prints one
JSON object per event on stdout. It uses the servers of KYU_DSN / KYU_REDIS_URL (default:
the local ones of scripts/setup.sh) and the queue of KYU_QUEUE (default ``kyu:json``);
tests/integration/test_examples.py runs it.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import trio

from kyu_trio import Config, Queue

# [formatter]


class JsonFormatter(logging.Formatter):
    FIELDS = ("job_id", "job_type", "attempt", "duration", "kyu_event", "error")

    def format(self, record: logging.LogRecord) -> str:
        line = {"level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        line.update({k: getattr(record, k) for k in self.FIELDS if hasattr(record, k)})
        return json.dumps(line)


handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(JsonFormatter())
logging.getLogger("kyu_trio").addHandler(handler)
logging.getLogger("kyu_trio").setLevel(logging.DEBUG)  # INFO: no claimed/completed lines
# [/formatter]

queue = Queue(
    Config.from_env(
        dsn=os.environ.get("KYU_DSN") or "postgresql://postgres@127.0.0.1:5432/test",
        redis_url=os.environ.get("KYU_REDIS_URL") or "redis://127.0.0.1:6379/0",
        queue_name=os.environ.get("KYU_QUEUE") or "kyu:json",
        metrics_port=0,
    )
)


@queue.handler("ok")
async def ok(payload: str) -> None:
    pass


@queue.handler("boom")
async def boom(payload: str) -> None:
    raise ValueError("bad input")


async def main() -> None:
    async with queue:
        await queue.enqueue("ok", "{}")
        await queue.enqueue("boom", "{}", max_retries=0)
        await queue.run_once()


if __name__ == "__main__":
    trio.run(main)
