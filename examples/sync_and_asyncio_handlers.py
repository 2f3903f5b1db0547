"""kyu-trio handler kinds beyond ``async def``: a blocking function and an asyncio one.

* ``checksum`` is a plain ``def``: kyu-trio runs it in a worker thread
  (`trio.to_thread.run_sync`), so blocking calls are fine inside it: here it reads a file
  and hashes it with hashlib, and sleeps a little with ``time.sleep`` as a stand-in for
  any blocking library. The trio workers keep running other jobs meanwhile. A thread
  cannot be interrupted: on timeout or shutdown the worker stops waiting for it and
  records the outcome, while the thread runs on to its end.
* ``probe`` is an asyncio coroutine function registered with
  ``queue.register("probe", probe, asyncio=True)``: it runs through trio-asyncio, whose
  loop `Queue.run_once` and `Queue.serve` open when such a handler is registered. It
  uses asyncio's own APIs only: ``asyncio.open_connection`` to the Redis and PostgreSQL
  servers the queue uses (a Redis ``PING``, and PostgreSQL's one-byte answer to an
  ``SSLRequest``), run concurrently with ``asyncio.gather``. Any asyncio library (aiohttp,
  asyncpg, aiobotocore...) works the same way.

`current_job()` works in both, as in ``async def`` handlers. Handlers return nothing, so
each one puts its result in a dict keyed by job id, which this script prints after
``await queue.run_once()`` has run both jobs.

Run it with ``.venv/bin/python examples/sync_and_asyncio_handlers.py``. It connects to
``postgresql://postgres@127.0.0.1:5432/test`` and ``redis://127.0.0.1:6379/0`` unless
KYU_DSN / KYU_REDIS_URL say otherwise, and uses the queue ``kyu:handlers`` unless
KYU_QUEUE says otherwise. Exits 0 when both jobs completed with the expected results.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import trio

from kyu_trio import Config, EnqueueRequest, JobStatus, Queue, current_job

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "kyu:handlers"
PROBE_TIMEOUT = 5.0

log = logging.getLogger("handlers_example")

#: What each handler found, by job id (handlers return nothing; jobs record only status).
results: dict[str, dict[str, Any]] = {}


def make_queue() -> Queue:
    overrides: dict[str, Any] = {"metrics_port": 0, "workers": 4}
    if not os.environ.get("KYU_DSN"):
        overrides["dsn"] = DEFAULT_DSN
    if not os.environ.get("KYU_REDIS_URL"):
        overrides["redis_url"] = DEFAULT_REDIS_URL
    if not os.environ.get("KYU_QUEUE"):
        overrides["queue_name"] = DEFAULT_QUEUE
    queue = Queue(Config.from_env(**overrides))
    queue.register("checksum", checksum)  # plain def: runs in a thread
    queue.register("probe", make_probe(queue.config), asyncio=True)  # asyncio coroutine
    return queue


# ---- a blocking handler: runs in a worker thread ----------------------------------------


def checksum(payload: str) -> None:
    path = Path(json.loads(payload)["path"])
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 16):
            digest.update(block)
    time.sleep(0.2)  # blocking is fine here: this is a worker thread, not the trio loop
    job = current_job()
    results[job.id] = {
        "sha256": digest.hexdigest(),
        "bytes": path.stat().st_size,
        "thread": threading.current_thread().name,
        "in_main_thread": threading.current_thread() is threading.main_thread(),
    }


# ---- an asyncio handler: runs through trio-asyncio --------------------------------------


async def open_stream(
    host: str, port: int, *, tls: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams to a TCP address, or to a Unix socket when ``host`` is a path."""
    if host.startswith("/"):
        return await asyncio.open_unix_connection(host)
    context = ssl.create_default_context() if tls else None
    return await asyncio.open_connection(host, port, ssl=context)


def redis_address(url: str) -> tuple[str, int, bool]:
    """(host or socket path, port, TLS?) of a redis://, rediss:// or unix:// URL."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path, 0, False
    return parts.hostname or "localhost", parts.port or 6379, parts.scheme == "rediss"


def postgres_address(dsn: str) -> tuple[str, int]:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(params.get("host") or params.get("hostaddr") or "localhost").split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}", port
    return host, port


async def redis_ping(host: str, port: int, tls: bool) -> str:
    reader, writer = await open_stream(host, port, tls=tls)
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        await writer.drain()
        # "+PONG", or "-NOAUTH ..." from a server that wants a password: an answer either way.
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


async def postgres_ssl_answer(host: str, port: int) -> str:
    reader, writer = await open_stream(host, port)
    try:
        writer.write((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))  # SSLRequest
        await writer.drain()
        answer = await reader.readexactly(1)  # b"S": TLS available, b"N": not
        return {b"S": "S (TLS available)", b"N": "N (no TLS)"}.get(answer, repr(answer))
    finally:
        writer.close()
        await writer.wait_closed()


def make_probe(config: Config) -> Any:
    redis_host, redis_port, redis_tls = redis_address(config.redis_url)
    pg_host, pg_port = postgres_address(config.dsn)

    async def probe(payload: str) -> None:
        loop = asyncio.get_running_loop()  # trio-asyncio's loop, inside the trio run
        started = loop.time()
        redis_answer, pg_answer, _ = await asyncio.wait_for(
            asyncio.gather(
                redis_ping(redis_host, redis_port, redis_tls),
                postgres_ssl_answer(pg_host, pg_port),
                asyncio.sleep(0.1),  # runs concurrently with the two round trips
            ),
            PROBE_TIMEOUT,
        )
        results[current_job().id] = {
            "redis": redis_answer,
            "postgres": pg_answer,
            "loop": type(loop).__name__,
            "seconds": round(loop.time() - started, 3),
            "label": payload,
        }

    return probe


# ---- main ------------------------------------------------------------------------------


async def main() -> int:
    queue = make_queue()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.bin"
        path.write_bytes(b"kyu-trio " * 100_000)
        expected = hashlib.sha256(path.read_bytes()).hexdigest()
        async with queue:
            checksum_id, probe_id = await queue.enqueue_many([
                EnqueueRequest("checksum", json.dumps({"path": str(path)}), max_retries=0),
                EnqueueRequest("probe", "servers", max_retries=0),
            ])  # fmt: skip
            await queue.run_once()  # both jobs are due now: run them and return
            jobs = {
                "checksum": await queue.inspect(checksum_id),
                "probe": await queue.inspect(probe_id),
            }

    problems = []
    for name, job in jobs.items():
        found = results.get(job.id)
        print(f"{name:<9} {job.status.value:<9} {json.dumps(found)}")
        if job.status is not JobStatus.COMPLETED:
            problems.append(f"{name}: ended {job.status.value}: {job.error_message}")
    sums = results.get(checksum_id, {})
    if sums and (sums["sha256"] != expected or sums["in_main_thread"]):
        problems.append(f"checksum: expected {expected} from a worker thread, got {sums}")
    probed = results.get(probe_id, {})
    if probed and not probed["redis"].startswith(("+PONG", "-NOAUTH")):
        problems.append(f"probe: unexpected Redis answer {probed['redis']!r}")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("OK: the thread handler and the asyncio handler both completed")
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    sys.exit(trio.run(main))
