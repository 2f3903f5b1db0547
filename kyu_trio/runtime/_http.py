"""A very small HTTP/1.0-style server on trio for /metrics, /healthz and /readyz.

Prometheus needs nothing more than GET with a Content-Length, so a dependency-free server
keeps the metrics endpoint inside `serve()`'s nursery, with no thread of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

MAX_REQUEST = 8192
READ_LIMIT = 5.0


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Awaitable[Response]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def _handle(
    routes: dict[str, Route], logger: logging.Logger, stream: trio.SocketStream
) -> None:
    async with stream:
        data = b""
        with trio.move_on_after(READ_LIMIT):
            while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
        line = data.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) < 2:
            return
        method, path = line[0], line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            response = Response(405, b"only GET\n")
        elif path not in routes:
            response = Response(404, b"not found: try /metrics, /healthz or /readyz\n")
        else:
            response = await routes[path]()
        head = (
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            await stream.send_all(head if method == "HEAD" else head + response.body)
        except trio.BrokenResourceError:
            logger.debug("metrics client went away before the response was sent")


async def serve_http(
    host: str, port: int, routes: dict[str, Route], logger: logging.Logger,
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on host:port; reports the bound port (useful with port 0)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    task_status.started(bound)
    await trio.serve_listeners(partial(_handle, routes, logger), listeners)
