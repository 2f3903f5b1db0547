"""A kyu-trio worker for bench/peers.py whose no-op handler does what every peer's no-op job
does there: one Redis INCR on the run's counter key (PEER_COUNTER_KEY in PEER_REDIS_URL), so
kyu-trio can also be compared with that round trip included. Serves until SIGTERM.

    python -m bench._kyu_incr_worker QUEUE WORKERS     # workers=WORKERS, pool_size=4
    python -m bench._kyu_incr_worker QUEUE default     # every Config default
    python -m bench._kyu_incr_worker QUEUE default:N   # every Config default but workers=N

The handler is ``async def`` and awaits the INCR on trio, as the asyncio peers' jobs await
redis-py's asyncio client (bench/_peers/_peer_common.aincr): an async I/O-bound handler, the
case kyu-trio's defaults are chosen for. redis-py has no trio client, so `RedisIncr` below
speaks the two commands it needs over trio streams. Either way the metrics endpoint is off
(``metrics_port=0``): it costs nothing per job, and two processes on one host would otherwise
both want port 9090.
"""

from __future__ import annotations

import os
import sys
from typing import Any
from urllib.parse import urlsplit

import trio

from kyu_trio import Config, Queue

#: Connections at most, as the asyncio peers' BlockingConnectionPool(max_connections=64).
MAX_CONNECTIONS = 64


def _command(*args: str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisIncr:
    """INCR over a pool of trio connections to one Redis database (no password, no TLS:
    what the benchmark's local server needs)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._db = parts.path.strip("/") or "0"
        self._idle: list[trio.SocketStream] = []
        self._limit = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def incr(self, key: str) -> None:
        async with self._limit:
            stream = self._idle.pop() if self._idle else await self._connect()
            # A connection that fails is dropped (not put back): the job fails and is retried.
            await self._call(stream, _command("INCR", key))
            self._idle.append(stream)

    async def _connect(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(self._host, self._port)
        await self._call(stream, _command("SELECT", self._db))
        return stream

    @staticmethod
    async def _call(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(request)
        reply = b""
        while not reply.endswith(b"\r\n"):  # INCR and SELECT answer with one line
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            reply += chunk
        if reply.startswith(b"-"):
            raise RuntimeError(f"Redis replied {reply.decode(errors='replace').strip()}")


def main() -> None:
    queue_name, workers = sys.argv[1], sys.argv[2]
    counter = os.environ["PEER_COUNTER_KEY"]
    client = RedisIncr(os.environ["PEER_REDIS_URL"])
    settings: dict[str, Any] = {"queue_name": queue_name, "metrics_port": 0, "shutdown_grace": 1.0}
    environ = dict(os.environ)
    if workers.startswith("default"):
        # Only where the servers are: a KYU_WORKERS in the shell must not pass for a default.
        environ = {k: v for k, v in environ.items() if k in ("KYU_DSN", "KYU_REDIS_URL")}
        if workers != "default":
            settings["workers"] = int(workers.removeprefix("default:"))
    else:
        settings.update(workers=int(workers), pool_size=4)
    queue = Queue(Config.from_env(environ, **settings))

    @queue.handler("noop")
    async def noop(payload: str) -> None:
        await client.incr(counter)

    trio.run(queue.serve)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
