"""The metrics endpoint cannot hurt the worker (issue 10, item 3; the taken port of item 14).

Clients that reset mid-request, hang up half-way, never read, flood the endpoint, or hit a
route that raises each lose only their own connection: `serve_http` keeps answering, its
memory stays bounded, and a taken port is one clear `KyuError`. `serve_http` runs in the
test's own nursery on port 0 with small routes; only the last two need servers (the
suite's throwaway ones).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio

from kyu_trio import Queue
from kyu_trio._errors import KyuError, MetricsPortError
from kyu_trio._runtime import _http
from kyu_trio._runtime._http import Response, Route, serve_http
from tests.faults.harness import FaultEnv

ROOT = str(Path(__file__).resolve().parents[2])
BIG = 5_000_000  # far more than the kernel buffers for a client that does not read


class Records(logging.Handler):
    """The records of one test's logger, to wait on what the server says it did."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def count(self, text: str) -> int:
        return sum(text in r.getMessage() for r in self.records)

    async def wait_for(self, text: str, n: int = 1, limit: float = 5.0) -> None:
        with trio.fail_after(limit):
            while self.count(text) < n:  # noqa: ASYNC110  (logging has no event to wait on)
                await trio.sleep(0.01)


class Server:
    def __init__(self, port: int, records: Records, calls: dict[str, int]) -> None:
        self.port = port
        self.records = records
        self.calls = calls

    async def get(self, path: str, limit: float = 2.0) -> tuple[int, bytes]:
        with trio.fail_after(limit):
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                return parse(await read_all(stream))

    async def raw(self, request: bytes) -> bytes:
        with trio.fail_after(2):
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            async with stream:
                await stream.send_all(request)
                return await read_all(stream)


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(1 << 20):
        data += chunk
    return data


def parse(data: bytes) -> tuple[int, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def reset(stream: trio.SocketStream) -> None:
    """Make the coming close a TCP reset instead of an orderly FIN."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@asynccontextmanager
async def running(
    extra: dict[str, Route] | None = None, big_size: int = BIG
) -> AsyncIterator[Server]:
    """serve_http on a free port with /healthz, /big (``big_size`` bytes, new each call, as
    /metrics is) and ``extra``.

    Leaving the block stops it; an error that escaped serve_http fails the test there.
    """
    calls = {"/big": 0}

    async def healthz() -> Response:
        return Response(200, b"ok\n")

    async def big() -> Response:
        calls["/big"] += 1
        return Response(200, bytes(big_size))

    logger = logging.getLogger(f"kyu_trio.test_http.{id(calls)}")
    logger.setLevel(logging.DEBUG)
    records = Records()
    logger.addHandler(records)
    routes = {"/healthz": healthz, "/big": big, **(extra or {})}
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, "127.0.0.1", 0, routes, logger)
            yield Server(port, records, calls)
            nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(records)


async def test_reset_mid_request_drops_that_connection_only() -> None:
    async with running() as server:
        for _ in range(5):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(b"GET /heal")
            await trio.sleep(0.05)  # the server has read the half and waits for the rest
            reset(stream)
            await stream.aclose()
        await server.records.wait_for("dropped: BrokenResourceError", 5)
        assert await server.get("/healthz") == (200, b"ok\n")


async def test_reset_while_the_response_is_sent_drops_that_connection_only() -> None:
    async with running() as server:
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(b"GET /big HTTP/1.1\r\n\r\n")
            await stream.receive_some(1000)  # the response is on its way
            reset(stream)
            await stream.aclose()
        await server.records.wait_for("dropped: BrokenResourceError", 3)
        assert await server.get("/healthz") == (200, b"ok\n")


async def test_half_request_then_close_is_answered_or_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_http, "READ_LIMIT", 0.3)
    async with running() as server:
        # Hung up after half a request line: answered 404 for what arrived, no crash.
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GET /heal")
        await stream.send_eof()
        with trio.fail_after(2):
            assert parse(await read_all(stream))[0] == 404
        await stream.aclose()
        # Hung up at once after half a request: nothing to answer to, nothing to crash.
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GE")
        await stream.aclose()
        # Sends part of a request and then nothing: closed after READ_LIMIT.
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"G")
        with trio.fail_after(2):
            assert parse(await read_all(stream))[0] == 400
        await stream.aclose()
        # Connects and says nothing: closed after READ_LIMIT without a word.
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        with trio.fail_after(2):
            assert await read_all(stream) == b""
        await stream.aclose()
        assert await server.get("/healthz") == (200, b"ok\n")


async def test_malformed_requests_get_400_or_405() -> None:
    async with running() as server:
        assert parse(await server.raw(b"\x00\xff\xfe garbage\r\n\r\n"))[0] == 400
        assert parse(await server.raw(b"GET\r\n\r\n"))[0] == 400
        assert parse(await server.raw(b"\r\n\r\n"))[0] == 400
        assert parse(await server.raw(b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert parse(await server.raw(b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert await server.raw(b"HEAD /healthz HTTP/1.1\r\n\r\n") == (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 3\r\nConnection: close\r\n\r\n"
        )
        # A request head longer than MAX_REQUEST is answered from its first line, though
        # closing with the rest unread resets the connection, which may beat the answer.
        long = b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
        with suppress(trio.BrokenResourceError):
            assert parse(await server.raw(long)) == (200, b"ok\n")
        assert await server.get("/healthz") == (200, b"ok\n")


async def test_client_that_never_reads_is_dropped_after_send_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_http, "SEND_LIMIT", 0.3)
    async with running() as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        start = trio.current_time()
        await stream.send_all(b"GET /big HTTP/1.1\r\n\r\n")
        await server.records.wait_for("did not take the response within 0.3s")
        assert trio.current_time() - start < 2
        # Dropped with a reset: the client gets what the kernel had buffered, never all.
        got = 0
        with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
            while chunk := await stream.receive_some(1 << 20):
                got += len(chunk)
        assert 0 < got < BIG
        await stream.aclose()
        assert await server.get("/healthz") == (200, b"ok\n")


async def test_connections_beyond_the_limit_wait_unaccepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_http, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(_http, "SEND_LIMIT", 30.0)  # only the clients' resets free slots here
    async with running() as server:
        clients = []
        for _ in range(10):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(b"GET /big HTTP/1.1\r\n\r\n")
            clients.append(stream)
        with trio.fail_after(2):
            while server.calls["/big"] < 4:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await trio.sleep(0.3)
        assert server.calls["/big"] == 4  # the other six wait in the listen backlog

        async with trio.open_nursery() as nursery:
            answers: list[tuple[int, bytes]] = []

            async def probe() -> None:
                answers.append(await server.get("/healthz", limit=5))

            nursery.start_soon(probe)
            await trio.sleep(0.3)
            assert answers == []  # queued behind the flood, not refused
            for stream in clients:
                reset(stream)
                await stream.aclose()
        assert answers == [(200, b"ok\n")]


async def test_flood_of_never_reading_clients_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 clients ask for a big response and never read: memory stays bounded by
    MAX_CONNECTIONS, and /healthz answers within a second once they are dropped."""
    monkeypatch.setattr(_http, "MAX_CONNECTIONS", 16)
    monkeypatch.setattr(_http, "SEND_LIMIT", 0.1)
    flood = 200
    tracemalloc.start()
    try:
        async with running(big_size=1_000_000) as server:
            clients = []
            for _ in range(flood):
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                await stream.send_all(b"GET /big HTTP/1.1\r\n\r\n")
                clients.append(stream)
            # A well-behaved client during the flood waits its turn; it is not refused.
            assert await server.get("/healthz", limit=10) == (200, b"ok\n")
            await server.records.wait_for("did not take the response", flood, limit=10)
            with trio.fail_after(1):
                assert await server.get("/healthz") == (200, b"ok\n")
            for stream in clients:
                await stream.aclose()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert server.calls["/big"] == flood
    # Unbounded, the flood would hold flood * BIG = 200 MB at once.
    assert peak < 3 * 16 * 1_000_000, f"peak {peak / 1e6:.0f} MB"


async def test_route_that_raises_answers_500_and_logs_the_traceback() -> None:
    async def broken() -> Response:
        raise RuntimeError("bug in a route")

    async with running({"/broken": broken}) as server:
        for _ in range(3):
            status, body = await server.get("/broken")
            assert status == 500
            assert b"worker's log" in body
        raised = [r for r in server.records.records if "raised; answering 500" in r.getMessage()]
        assert len(raised) == 3
        assert raised[0].levelno == logging.ERROR
        assert raised[0].exc_info is not None
        assert "bug in a route" in str(raised[0].exc_info[1])
        assert await server.get("/healthz") == (200, b"ok\n")


async def test_taken_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(MetricsPortError) as caught:
                await nursery.start(
                    serve_http, "127.0.0.1", port, {}, logging.getLogger("kyu_trio.test")
                )
    message = str(caught.value)
    assert isinstance(caught.value, KyuError)
    assert "\n" not in message
    assert f"metrics port {port} on 127.0.0.1 is already in use" in message
    assert "KYU_METRICS_PORT" in message and "0 to disable" in message


async def test_host_not_on_this_machine_is_one_clear_error() -> None:
    with pytest.raises(MetricsPortError, match=r"192\.0\.2\.1:0: .* \(KYU_METRICS_HOST\)"):
        await _http.open_http_listeners("192.0.2.1", 0)  # TEST-NET-1, never local


@pytest.mark.integration
async def test_serve_with_a_taken_port_raises_the_error_alone(env: FaultEnv) -> None:
    records = Records()
    logger = logging.getLogger("kyu_trio.test_http.serve")
    logger.addHandler(records)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            queue = Queue(env.config(metrics_port=port, logger=logger))
            with pytest.raises(MetricsPortError, match=f"metrics port {port} on 127.0.0.1"):
                async with queue:
                    await queue.serve()
    finally:
        logger.removeHandler(records)
    assert not [r for r in records.records if r.exc_info], "a taken port is not a crash"


APP = """
from kyu_trio import Config, Queue

queue = Queue(Config.from_env())
"""


@pytest.mark.integration
def test_worker_with_a_taken_port_exits_1_with_one_line(env: FaultEnv, tmp_path: Path) -> None:
    (tmp_path / "kyu_port_app.py").write_text(APP)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("KYU_")}
        environ.update(
            KYU_DSN=env.pg.dsn,
            KYU_REDIS_URL=env.redis.url,
            KYU_QUEUE=env.queue,
            KYU_METRICS_PORT=str(port),
            PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]),
        )
        done = subprocess.run(
            [sys.executable, "-m", "kyu_trio", "worker", "kyu_port_app:queue"],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"error: metrics port {port} on 127.0.0.1 is already in use: set metrics_port "
        "(KYU_METRICS_PORT) to a free port, or to 0 to disable the endpoint\n"
    )
