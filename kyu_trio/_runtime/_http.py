"""A very small HTTP/1.0-style server on trio for /metrics, /healthz and /readyz.

Prometheus needs nothing more than GET with a Content-Length, so a dependency-free server
keeps the metrics endpoint inside `serve()`'s nursery, with no thread of its own.

It runs in the worker's own nursery, so nothing a client does may escape its connection:
every connection's errors end that connection only, reading the request and sending the
response each have a deadline, and at most `MAX_CONNECTIONS` connections are served at once.
Beyond that the server stops calling accept(): new connections wait in the kernel's listen
backlog (which costs this process no file descriptor and no memory) and are served in turn
as slots free up; a connection holds its slot for at most `READ_LIMIT` + `SEND_LIMIT`
seconds plus its route's own time. A Prometheus scrape or health probe that arrives during a
flood is therefore late rather than refused, and the worker's memory and file descriptors
stay bounded whatever the clients do.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

import attrs
import trio

from .._errors import MetricsPortError

# Module constants, read at each use, so that tests can make them small.
MAX_REQUEST = 8192  # bytes of request head read at most; the rest is ignored
READ_LIMIT = 5.0  # seconds for the request head to arrive
SEND_LIMIT = 5.0  # seconds for the client to take the whole response
MAX_CONNECTIONS = 32  # served at once; two scrapers and a few probes need far fewer
ACCEPT_RETRY = 0.1  # seconds to wait when accept() fails for want of fds or memory

# accept() errors that mean "the process or system is out of something", not "this
# connection is bad": waiting lets other parts of the worker release what they hold.
_ACCEPT_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Awaitable[Response]]
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@attrs.define
class _Server:
    routes: dict[str, Route]
    logger: logging.Logger
    slots: trio.Semaphore

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            starved = False
            while True:
                # The slot is taken before accept(), so that a full server leaves new
                # connections in the kernel's backlog instead of holding them open here.
                await self.slots.acquire()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    self.slots.release()
                    if exc.errno not in _ACCEPT_STARVED:
                        raise
                    if not starved:  # once per streak: it can last a while
                        self.logger.warning(
                            "metrics endpoint cannot accept connections (%s); retrying every %ss",
                            os.strerror(exc.errno),
                            ACCEPT_RETRY,
                        )
                    starved = True
                    await trio.sleep(ACCEPT_RETRY)
                    continue
                except BaseException:
                    self.slots.release()
                    raise
                starved = False
                nursery.start_soon(self.connection, stream)

    async def connection(self, stream: trio.SocketStream) -> None:
        """Serve one connection; whatever happens on it stays in it."""
        try:
            try:
                await self.answer(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                # A client that resets, vanishes or times out is routine on the network.
                self.logger.debug("metrics client %s dropped: %r", _peer(stream), exc)
            except Exception:
                # A bug of ours; it must not take the worker down with this connection.
                self.logger.exception("metrics connection from %s failed", _peer(stream))
            finally:
                await trio.aclose_forcefully(stream)
        finally:
            self.slots.release()

    async def answer(self, stream: trio.SocketStream) -> None:
        data = b""
        with trio.move_on_after(READ_LIMIT):
            while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                chunk = await stream.receive_some(MAX_REQUEST - len(data))
                if not chunk:
                    break
                data += chunk
        if not data:
            return  # connected and said nothing: nothing to answer
        line = data.split(b"\r\n", 1)[0].decode("latin-1").split()
        method = line[0] if line else ""
        if len(line) < 2 or not line[1].startswith("/"):
            response = Response(400, b"expected a request line like: GET /metrics HTTP/1.1\n")
        elif method not in ("GET", "HEAD"):
            response = Response(405, b"only GET\n")
        else:
            response = await self.route(line[1].split("?", 1)[0])
        head = (
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with trio.move_on_after(SEND_LIMIT) as sending:
            await stream.send_all(head)
            if method != "HEAD":
                # Sent apart from the head: joining them would copy a large body.
                await stream.send_all(response.body)
        if sending.cancelled_caught:
            # Reset instead of a normal close, so the kernel also drops what it still
            # buffers for this client rather than trying to deliver it after we are gone.
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.logger.debug(
                "metrics client %s dropped: it did not take the response within %ss",
                _peer(stream),
                SEND_LIMIT,
            )

    async def route(self, path: str) -> Response:
        if path not in self.routes:
            return Response(404, b"not found: try /metrics, /healthz or /readyz\n")
        try:
            return await self.routes[path]()
        except Exception:
            self.logger.exception("metrics route %s raised; answering 500", path)
            return Response(500, b"internal error: see the worker's log\n")


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:  # already reset: the address is gone with the connection
        return "(gone)"
    return f"{host}:{port}"


async def open_http_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Bind host:port for `serve_http`; raises `MetricsPortError` if it cannot be bound
    (e.g. the port is taken), with one line naming host:port and the setting to change.

    Binding apart from serving lets a caller do it before opening its nursery, so that the
    error reaches its caller alone rather than inside an ExceptionGroup.
    """
    fix = "set metrics_port (KYU_METRICS_PORT) to a free port, or to 0 to disable the endpoint"
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except socket.gaierror as exc:
        raise MetricsPortError(
            f"metrics host {host!r} does not resolve ({exc.strerror}): set metrics_host "
            "(KYU_METRICS_HOST) to an address of this machine, e.g. 127.0.0.1"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = f"metrics port {port} on {host} is already in use"
        elif exc.errno == errno.EACCES:
            reason = f"not allowed to listen on {host}:{port} (ports below 1024 need privileges)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = f"cannot listen on {host}:{port}: {host} is not an address of this machine"
            fix = "set metrics_host (KYU_METRICS_HOST) to one, e.g. 127.0.0.1"
        else:
            reason = f"cannot listen on {host}:{port} ({exc.strerror or exc})"
        raise MetricsPortError(f"{reason}: {fix}") from exc


async def serve_http(
    host: str,
    port: int,
    routes: dict[str, Route],
    logger: logging.Logger,
    *,
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on host:port; reports the bound port (useful with port 0).

    ``listeners``, if given, come from ``open_http_listeners(host, port)`` and are served
    (and closed) instead of binding here. Raises `MetricsPortError` if host:port cannot be
    bound.
    """
    if listeners is None:
        listeners = await open_http_listeners(host, port)
    bound = listeners[0].socket.getsockname()[1]
    server = _Server(routes, logger, trio.Semaphore(MAX_CONNECTIONS))
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(server.accept_loop, listener, nursery)
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        task_status.started(bound)
