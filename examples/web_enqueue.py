"""kyu-trio web example: enqueue jobs from an HTTP handler.

A small trio web app, with no web framework: a tiny HTTP/1.1 server on
`trio.serve_tcp` (one request per connection, ``Content-Length`` bodies) and two routes:

* ``POST /jobs`` with a JSON body ``{"type": "send_email", "payload": ..., "priority": 5}``
  enqueues a job and answers ``201 Created`` with ``{"id": "<job id>"}``. ``payload`` is
  passed on as is when it is a string, and as its JSON text otherwise; ``priority`` is
  optional (default 0).
* ``GET /jobs/<id>`` answers the job as JSON (``404`` when there is no such job).

The `Queue` is connected once, for the lifetime of the app (``async with queue``), and
every request handler uses that connection. Run it with::

    .venv/bin/python examples/web_enqueue.py                        # HTTP on 127.0.0.1:8000
    .venv/bin/python examples/web_enqueue.py --serve-workers        # ...and run the jobs too
    curl -si -X POST localhost:8000/jobs -d '{"type": "send_email", "payload": {"to": "a@b.c"}}'
    curl -s localhost:8000/jobs/<id>

Without ``--serve-workers`` the app only enqueues, and a separate worker process runs the
jobs (``kyu-trio worker``, or this script with ``--serve-workers``); with it,
`Queue.serve` runs in the app's own nursery. ``--self-test`` starts the app on a free port
with workers, POSTs a job with a raw trio TCP client, polls ``GET /jobs/<id>`` until the
job is completed, prints it and exits 0 (1 if anything went wrong).

Host and port come from ``--host``/``--port``, else ``KYU_WEB_HOST``/``KYU_WEB_PORT``,
else 127.0.0.1:8000. It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0`` unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the
queue ``kyu:web`` unless KYU_QUEUE says otherwise. Its metrics endpoint is off unless
KYU_METRICS_PORT is set. SIGINT/SIGTERM stop it (gracefully, with ``--serve-workers``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from http import HTTPStatus
from typing import Any

import attrs
import trio

from kyu_trio import (
    Config,
    InvalidJobError,
    Job,
    JobNotFound,
    JobStatus,
    KyuConnectionError,
    Queue,
    current_job,
)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "kyu:web"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_HEAD = 16 * 1024  # request line + headers
MAX_BODY = 1024 * 1024
READ_TIMEOUT = 10.0
SELF_TEST_DEADLINE = 30.0
FINAL = {JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED}

log = logging.getLogger("web_enqueue")


# ---- the queue ------------------------------------------------------------------------


def make_queue() -> Queue:
    overrides: dict[str, Any] = {"scheduler_interval": 0.5, "shutdown_grace": 5.0}
    if not os.environ.get("KYU_DSN"):
        overrides["dsn"] = DEFAULT_DSN
    if not os.environ.get("KYU_REDIS_URL"):
        overrides["redis_url"] = DEFAULT_REDIS_URL
    if not os.environ.get("KYU_QUEUE"):
        overrides["queue_name"] = DEFAULT_QUEUE
    if not os.environ.get("KYU_METRICS_PORT"):
        overrides["metrics_port"] = 0
    queue = Queue(Config.from_env(**overrides))

    @queue.handler("send_email")
    async def send_email(payload: str) -> None:
        to = json.loads(payload)["to"]
        await trio.sleep(0.05)  # talk to the mail server here
        log.info("job %s: mail sent to %s", current_job().id[-8:], to)

    return queue


def job_to_json(job: Job) -> dict[str, Any]:
    """A `Job` as JSON-ready data: datetimes in ISO 8601, the status as its string."""
    data = attrs.asdict(
        job,  # nested too: the datetimes of job.attempts
        value_serializer=lambda _inst, _field, value: (
            value.isoformat() if isinstance(value, datetime) else value
        ),
    )
    data["status"] = job.status.value
    return data


# ---- a tiny HTTP/1.1 server -------------------------------------------------------------


@attrs.frozen
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@attrs.frozen
class Response:
    status: int
    data: Any
    headers: dict[str, str] = attrs.field(factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_request(stream: trio.abc.Stream) -> Request | None:
    """One request from the stream; None when the client closed it before sending one."""
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise HttpError(431, "request head too large")
        chunk = await stream.receive_some(65536)
        if not chunk:
            if buffer:
                raise HttpError(400, "incomplete request")
            return None
        buffer += chunk
    head, _, body = bytes(buffer).partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"bad request line {request_line[:100]!r}")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise HttpError(400, f"bad header line {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked bodies are not supported: send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length < 0:
        raise HttpError(400, "bad Content-Length")
    if length > MAX_BODY:
        raise HttpError(413, f"body over {MAX_BODY} bytes")
    if headers.get("expect", "").lower() == "100-continue" and len(body) < length:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl asks for large bodies
    data = bytearray(body)
    while len(data) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise HttpError(400, "body shorter than Content-Length")
        data += chunk
    path = target.split("?", 1)[0]
    return Request(method.upper(), path, headers, bytes(data[:length]))


def encode_response(response: Response) -> bytes:
    body = (json.dumps(response.data, indent=2) + "\n").encode()
    reason = HTTPStatus(response.status).phrase
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
        **response.headers,
    }
    head = f"HTTP/1.1 {response.status} {reason}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


App = Callable[[Request], Awaitable[Response]]


async def handle_connection(app: App, stream: trio.abc.Stream) -> None:
    """Serve one request on this connection, then close it. Never raises: a failing
    request must not bring down `trio.serve_tcp` (and with it the app)."""
    try:
        async with stream:
            try:
                request = None
                with trio.move_on_after(READ_TIMEOUT) as timeout:
                    request = await read_request(stream)
                if timeout.cancelled_caught:
                    raise HttpError(408, "request timed out")
                if request is None:
                    return
                response = await app(request)
            except HttpError as exc:
                response = Response(exc.status, {"error": str(exc)})
            except Exception:
                log.exception("request failed")
                response = Response(500, {"error": "internal error"})
            await stream.send_all(encode_response(response))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away


# ---- the app: routes ------------------------------------------------------------------


def make_app(queue: Queue) -> App:
    """The routes, using the queue's one connection."""

    async def post_job(request: Request) -> Response:
        try:
            body = json.loads(request.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise HttpError(400, 'expected {"type": str, "payload": ..., "priority": int}')
        payload = body.get("payload", "")
        if not isinstance(payload, str):
            payload = json.dumps(payload)
        priority = body.get("priority", 0)
        try:
            job_id = await queue.enqueue(body["type"], payload, priority=priority)
        except InvalidJobError as exc:
            raise HttpError(400, str(exc)) from None
        return Response(201, {"id": job_id}, {"Location": f"/jobs/{job_id}"})

    async def get_job(job_id: str) -> Response:
        try:
            job = await queue.inspect(job_id)
        except JobNotFound as exc:
            raise HttpError(404, str(exc)) from None
        return Response(200, job_to_json(job))

    async def app(request: Request) -> Response:
        try:
            if request.path == "/jobs":
                if request.method != "POST":
                    return Response(405, {"error": "use POST"}, {"Allow": "POST"})
                return await post_job(request)
            if request.path.startswith("/jobs/") and request.path.count("/") == 2:
                if request.method != "GET":
                    return Response(405, {"error": "use GET"}, {"Allow": "GET"})
                return await get_job(request.path.removeprefix("/jobs/"))
        except KyuConnectionError as exc:
            raise HttpError(503, str(exc)) from None
        raise HttpError(404, f"no route for {request.method} {request.path}")

    return app


async def run_app(
    queue: Queue,
    host: str,
    port: int,
    serve_workers: bool,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect the queue, serve HTTP (and the workers) until SIGINT/SIGTERM or
    `queue.shutdown()` (with workers), or until cancelled. Reports the HTTP port."""
    async with queue, trio.open_nursery() as nursery:  # one connection for the app's life
        if serve_workers:

            async def serve(
                *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                # serve() handles SIGINT/SIGTERM (in the main thread) and returns once
                # running jobs are recorded: then stop the HTTP server too.
                await queue.serve(task_status=task_status)
                nursery.cancel_scope.cancel()

            await nursery.start(serve)
        else:
            nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(handle_connection, make_app(queue)), port, host=host)
        )
        bound = listeners[0].socket.getsockname()[1]
        log.info(
            "listening on http://%s:%d (POST /jobs, GET /jobs/<id>); queue %r%s",
            host, bound, queue.config.queue_name,
            " with workers" if serve_workers else "; run workers elsewhere",
        )  # fmt: skip
        task_status.started(bound)


async def stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return


# ---- the self-test: a raw trio TCP client -------------------------------------------------


async def http_request(
    host: str, port: int, method: str, path: str, body: bytes = b""
) -> tuple[int, Any]:
    """Send one request over a plain trio TCP stream; return (status, parsed JSON body)."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        await stream.send_all(head.encode() + body)
        raw = bytearray()
        while chunk := await stream.receive_some(65536):
            raw += chunk
    status_line, _, rest = bytes(raw).partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload) if payload else None


async def self_test() -> int:
    queue = make_queue()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_app, queue, "127.0.0.1", 0, True)
        try:
            with trio.fail_after(SELF_TEST_DEADLINE):
                return await exercise(port)
        except trio.TooSlowError:
            print(f"FAILED: not done within {SELF_TEST_DEADLINE:.0f}s", file=sys.stderr)
            return 1
        finally:
            queue.shutdown()  # graceful: serve() returns, then the HTTP server stops


async def exercise(port: int) -> int:
    host = "127.0.0.1"
    request = {"type": "send_email", "payload": {"to": "ada@example.com"}, "priority": 5}
    status, answer = await http_request(host, port, "POST", "/jobs", json.dumps(request).encode())
    print(f"POST /jobs {json.dumps(request)} -> {status} {json.dumps(answer)}")
    if status != 201:
        print("FAILED: expected 201 Created", file=sys.stderr)
        return 1
    job_id = answer["id"]

    # The error paths answer JSON too.
    bad, _ = await http_request(host, port, "POST", "/jobs", b"{not json")
    missing, _ = await http_request(host, port, "GET", "/jobs/00000000-0000-0000-0000-000000000000")
    print(f"POST /jobs with a bad body -> {bad}; GET /jobs/<unknown id> -> {missing}")
    if (bad, missing) != (400, 404):
        print("FAILED: expected 400 and 404", file=sys.stderr)
        return 1

    while True:  # the workers run in the app's nursery: poll the job over HTTP
        status, job = await http_request(host, port, "GET", f"/jobs/{job_id}")
        if status != 200:
            print(f"FAILED: GET /jobs/{job_id} -> {status} {job}", file=sys.stderr)
            return 1
        if JobStatus(job["status"]) in FINAL:
            break
        await trio.sleep(0.1)
    print(f"GET /jobs/{job_id} -> {status}")
    print(
        json.dumps(
            {
                k: job[k]
                for k in (
                    "id",
                    "job_type",
                    "payload",
                    "status",
                    "priority",
                    "retry_count",
                    "completed_at",
                )
            },
            indent=2,
        )
    )
    if job["status"] != JobStatus.COMPLETED.value:
        print(f"FAILED: job ended {job['status']}: {job['error_message']}", file=sys.stderr)
        return 1
    print("OK: a job enqueued over HTTP was completed by the app's own workers")
    return 0


# ---- command line ---------------------------------------------------------------------


def first_error(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--host", default=os.environ.get("KYU_WEB_HOST") or DEFAULT_HOST,
        help=f"address to listen on (default: $KYU_WEB_HOST, else {DEFAULT_HOST})",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("KYU_WEB_PORT") or DEFAULT_PORT),
        help=f"port to listen on; 0 picks a free one (default: $KYU_WEB_PORT, else "
             f"{DEFAULT_PORT})",
    )  # fmt: skip
    parser.add_argument(
        "--serve-workers", action="store_true",
        help="also run the queue's workers, scheduler and reaper in this process",
    )  # fmt: skip
    parser.add_argument(
        "--self-test", action="store_true",
        help="start on a free port with workers, enqueue a job over HTTP, wait for it, exit",
    )  # fmt: skip
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    if args.self_test:
        return await self_test()
    await run_app(make_queue(), args.host, args.port, args.serve_workers)
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    code = 1
    try:
        code = trio.run(main, arguments)
    except* KyuConnectionError as group:  # a server is unreachable: say which, in one line
        print(f"error: {first_error(group)}", file=sys.stderr)
    sys.exit(code)
