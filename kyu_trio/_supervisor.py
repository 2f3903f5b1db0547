"""``kyu-trio worker APP --processes N``: one supervisor and N worker processes on a host.

Python runs one core per process, so a host runs several worker processes. The supervisor
starts each one as ``python -m kyu_trio worker APP`` (so the app is imported afresh in each),
restarts one that dies, passes SIGINT/SIGTERM on, and serves the metrics of all of them on
the one metrics port.

It is written with trio, like the worker it supervises: it waits for many things at once
(every child's exit and reports, signals, restart back-offs, and scrapes that fan out to
every child), and one trio loop waits for all of them without a thread or a polling loop of
its own: trio waits for a child's exit on a pidfd, and the merged /metrics reuses
runtime/_http.py's hardened server.

Each child gets one end of a socket pair (its fd and the settings to apply are in the
``KYU_TRIO_WORKER_PROCESS`` environment variable), on which it reports one line each:
``ready PORT`` once it serves (PORT: where its own metrics are, on 127.0.0.1; 0: none) and
``error MESSAGE`` when it stops with an error. The supervisor never writes to it: the child
reads only the end of the stream, which tells it the supervisor is gone (even after a
SIGKILL), and then stops gracefully.

The rules:

- a child that fails before it is ready, at its first start (bad settings, a server it
  cannot reach), fails the supervisor at once: restarting would only repeat the error;
- a child that exits otherwise is restarted after a back-off that doubles from
  `FIRST_BACKOFF` up to `MAX_BACKOFF`; the `MAX_FAILURES`-th exit of one child within
  `FAILURE_WINDOW` seconds fails the supervisor;
- a failure stops the other children gracefully, and the supervisor exits with one
  ``error:`` line (the CLI prints the message `Supervisor.run` returns);
- each SIGINT or SIGTERM is passed to every child as SIGTERM (children run in their own
  process group, so a Ctrl-C on the terminal reaches them only this way): the first makes
  them finish their running jobs, the second requeue them at once. The supervisor exits 0
  when every child stopped cleanly after the signal.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import attrs
import trio
from prometheus_client.registry import Collector

from ._errors import KyuError
from ._runtime._http import Response, Route, serve_http
from ._runtime._metrics import MergedRegistries
from ._runtime._queue import Queue
from ._runtime._serve_queues import serve_queues

#: Set in each child's environment by the supervisor (JSON: index, fd, metrics, overrides).
CHILD_ENV = "KYU_TRIO_WORKER_PROCESS"
#: Each child's own metrics endpoint, which only the supervisor reads.
CHILD_METRICS_HOST = "127.0.0.1"

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
#: How long one child's /metrics may take within a scrape of the supervisor's.
SCRAPE_LIMIT = 3.0
#: Largest /metrics body taken from one child.
MAX_SCRAPE = 16 * 1024 * 1024
#: A report line is short; a longer one is not the protocol's and is dropped.
MAX_REPORT = 4096
#: How long reports may still arrive after a child exited.
REPORT_DRAIN = 1.0


def cpu_count() -> int:
    """The cores this process may run on (``--processes auto``)."""
    counter: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if counter is not None:  # Python 3.13+
        count = counter()
    else:
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:  # no affinity on this platform
            count = os.cpu_count()
    return max(1, count or 1)


def run_unwrapped(fn: Callable[[], Any]) -> None:
    """``trio.run(fn)``, raising the error itself when a nursery wrapped a single one in an
    exception group (the CLI prints a `KyuError` as one line, not a group's traceback)."""
    try:
        trio.run(fn)
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, BaseExceptionGroup):
            raise
        raise leaf from leaf.__cause__


# ---- the child's side -----------------------------------------------------------------------


@attrs.define(eq=False)
class WorkerProcess:
    """This process is child ``index`` of a supervisor: how it serves and reports."""

    index: int
    link: socket.socket
    metrics: bool
    overrides: dict[str, Any]

    @classmethod
    def from_env(cls) -> WorkerProcess | None:
        """The settings the supervisor gave this process, or None if it has no supervisor.
        The variable is removed, so that processes the app starts do not inherit it."""
        raw = os.environ.pop(CHILD_ENV, None)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            fd = data["fd"]
            os.set_inheritable(fd, False)
            link = socket.socket(fileno=fd)
            return cls(int(data["index"]), link, bool(data["metrics"]), dict(data["overrides"]))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise KyuError(
                f"{CHILD_ENV} is set, but not by a kyu-trio supervisor ({type(exc).__name__}):"
                " unset it"
            ) from None

    def serve(self, queues: Sequence[Queue]) -> None:
        """Serve ``queues`` as `serve_queues` does, with their metrics on an ephemeral
        port; report ``ready`` once serving."""
        run_unwrapped(partial(self._serve, queues))

    def report_error(self, message: str) -> bool:
        """Tell the supervisor why this process stops; False if it is gone."""
        try:
            self.link.settimeout(2.0)
            self.link.sendall(f"error {' '.join(message.split())}\n".encode())
        except OSError:
            return False
        return True

    async def _serve(self, queues: Sequence[Queue]) -> None:
        link = trio.socket.from_stdlib_socket(self.link)
        queue = queues[0]  # its logger speaks for all
        async with trio.open_nursery() as nursery:
            port = 0
            if self.metrics:
                # Only the supervisor reads this endpoint: its "metrics on ..." line at INFO
                # would send operators to the wrong port.
                logger = queue.config.logger.getChild("worker_process")
                logger.setLevel(logging.WARNING)
                port = await nursery.start(
                    serve_http, CHILD_METRICS_HOST, 0, _child_routes(queues), logger
                )
            await nursery.start(_serve_then_stop, queues, nursery.cancel_scope)
            nursery.start_soon(_follow_supervisor, link, queues, f"ready {port}\n".encode())


async def _serve_then_stop(
    queues: Sequence[Queue],
    done: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        # metrics_port=0: the supervisor's endpoint is the one operators scrape.
        await serve_queues(*queues, metrics_port=0, task_status=task_status)
    finally:
        done.cancel()  # serving has ended: stop the metrics endpoint and the link with it


async def _follow_supervisor(
    link: trio.socket.SocketType, queues: Sequence[Queue], ready: bytes
) -> None:
    """Report ``ready``, then wait for the supervisor to go away (it never writes)."""
    try:
        while ready:
            ready = ready[await link.send(ready) :]
        while await link.recv(64):
            pass
    except OSError:
        pass
    queues[0].config.logger.warning("the kyu-trio supervisor is gone: stopping")
    for queue in queues:
        queue.shutdown()


def _child_routes(queues: Sequence[Queue]) -> dict[str, Route]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    # One exposition of every queue's registry, each sample labelled with its queue.
    exposed = MergedRegistries([queue.metrics.registry for queue in queues])

    async def metrics() -> Response:
        return Response(200, generate_latest(exposed), CONTENT_TYPE_LATEST)

    async def healthz() -> Response:
        return Response(200, b"ok\n")

    return {"/metrics": metrics, "/healthz": healthz}


# ---- the supervisor ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Child:
    index: int
    process: trio.Process | None = None
    ready: bool = False
    port: int = 0  # its metrics endpoint while it is ready (0: none)
    error: str | None = None  # the error it reported last
    restarts: int = 0
    failures: list[float] = attrs.Factory(list)  # trio times of its recent unexpected exits

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@attrs.define(eq=False)
class Supervisor:
    """Runs ``processes`` copies of ``command`` (each a ``kyu-trio worker``) until stopped
    by a signal or until they keep failing.

    ``overrides`` are the Config settings each child applies to the app's queue (what the
    command line said); ``metrics_host``/``metrics_port`` is where the merged metrics are
    served (port 0: nowhere, and the children serve none either).
    """

    command: Sequence[str]
    processes: int
    overrides: Mapping[str, Any]
    metrics_host: str
    metrics_port: int
    logger: logging.Logger
    env: Mapping[str, str] | None = None
    first_backoff: float = FIRST_BACKOFF
    max_backoff: float = MAX_BACKOFF
    max_failures: int = MAX_FAILURES
    failure_window: float = FAILURE_WINDOW
    children: list[_Child] = attrs.field(init=False)
    _stopping: trio.Event = attrs.field(init=False, factory=trio.Event)
    _failure: str | None = attrs.field(init=False, default=None)
    _signals: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.children = [_Child(i) for i in range(self.processes)]

    def run(self) -> str | None:
        """Supervise until every child has stopped; None if they all stopped cleanly after
        a signal, else the error (one line)."""
        return trio.run(self.main)

    async def main(self) -> str | None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                if self.metrics_port:
                    try:
                        await nursery.start(
                            serve_http,
                            self.metrics_host,
                            self.metrics_port,
                            self._routes(),
                            self.logger,
                        )
                    except KyuError as exc:  # e.g. the port is taken
                        return str(exc)
                nursery.start_soon(self._forward_signals, signals)
                self.logger.info("supervising %d worker processes", self.processes)
                async with trio.open_nursery() as children:
                    for child in self.children:
                        children.start_soon(self._keep_running, child)
                nursery.cancel_scope.cancel()  # every child is done: stop serving metrics
        return self._failure

    # ---- children ------------------------------------------------------------------

    def _stop(self) -> None:
        self._stopping.set()
        for child in self.children:
            if child.process is not None and child.alive():
                child.process.send_signal(signal.SIGTERM)

    def _fail(self, message: str) -> None:
        if self._failure is None:
            self._failure = message
            if not self._stopping.is_set():
                # The message itself is the CLI's `error:` line once all have stopped.
                self.logger.warning("a worker process failed: stopping the others")
        self._stop()

    async def _forward_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self._signals += 1
            name = signal.Signals(signum).name
            if self._signals == 1:
                self.logger.warning(
                    "%s: stopping the worker processes (they finish their running jobs; "
                    "signal again to requeue those now)",
                    name,
                )
            else:
                self.logger.warning("%s again: the worker processes requeue their jobs now", name)
            self._stop()

    async def _keep_running(self, child: _Child) -> None:
        first = True
        while not self._stopping.is_set():
            if not first:
                child.restarts += 1
            code = await self._run_child(child)
            if code is None:
                return
            what = f"({_status(code)})" + (f": {child.error}" if child.error else "")
            if self._stopping.is_set():
                # A child killed by our SIGTERM before or after serve() held no job.
                if code not in (0, -signal.SIGTERM):
                    self._fail(f"worker process {child.index} failed while stopping {what}")
                return
            if first and not child.ready:
                self._fail(f"worker process {child.index} failed at start-up {what}")
                return
            first = False
            now = trio.current_time()
            child.failures = [t for t in child.failures if now - t < self.failure_window]
            child.failures.append(now)
            if len(child.failures) >= self.max_failures:
                self._fail(
                    f"worker process {child.index} exited {len(child.failures)} times within "
                    f"{self.failure_window:g}s, the last time {what}"
                )
                return
            delay = min(self.max_backoff, self.first_backoff * 2 ** (len(child.failures) - 1))
            self.logger.warning(
                "worker process %d exited unexpectedly %s; restarting it in %.1fs",
                child.index,
                what,
                delay,
            )
            with trio.move_on_after(delay):
                await self._stopping.wait()

    async def _run_child(self, child: _Child) -> int | None:
        """Start ``child``, follow its reports until it exits; its exit code (None: it
        could not be started, and the supervisor fails)."""
        ours, theirs = socket.socketpair()
        with ours:
            settings = {
                "index": child.index,
                "fd": theirs.fileno(),
                "metrics": bool(self.metrics_port),
                "overrides": dict(self.overrides),
            }
            env = {
                **(os.environ if self.env is None else self.env),
                CHILD_ENV: json.dumps(settings),
            }
            try:
                with theirs:
                    process = await trio.lowlevel.open_process(
                        list(self.command),
                        env=env,
                        pass_fds=(theirs.fileno(),),
                        stdin=subprocess.DEVNULL,
                        process_group=0,
                    )
            except OSError as exc:
                self._fail(f"cannot start worker process {child.index}: {exc}")
                return None
            child.process, child.ready, child.port, child.error = process, False, 0, None
            self.logger.info("worker process %d started (pid %d)", child.index, process.pid)
            if self._stopping.is_set():
                process.send_signal(signal.SIGTERM)  # the stop came while it was starting
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_reports, child, trio.socket.from_stdlib_socket(ours))
                code = await process.wait()
                # Its end of the link closed with it, unless something it started kept it.
                nursery.cancel_scope.deadline = trio.current_time() + REPORT_DRAIN
        child.port = 0
        return code

    async def _read_reports(self, child: _Child, link: trio.socket.SocketType) -> None:
        pending = b""
        while True:
            try:
                data = await link.recv(MAX_REPORT)
            except OSError:
                return
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                self._report(child, line.decode("utf-8", "replace"))
            if len(pending) > MAX_REPORT:
                pending = b""

    def _report(self, child: _Child, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "ready" and rest.isdigit():
            child.ready, child.port = True, int(rest)
        elif kind == "error":
            child.error = rest.strip()

    # ---- metrics -------------------------------------------------------------------

    def _routes(self) -> dict[str, Route]:
        from prometheus_client import CONTENT_TYPE_LATEST

        async def metrics() -> Response:
            scrapes: dict[int, list[Any]] = {}
            async with trio.open_nursery() as nursery:
                for child in self.children:
                    if child.port:
                        nursery.start_soon(self._scrape, child, scrapes)
            restarts = {child.index: child.restarts for child in self.children}
            return Response(200, merge_metrics(scrapes, restarts), CONTENT_TYPE_LATEST)

        async def healthz() -> Response:
            return Response(
                200, f"ok: {self._ready()} of {self.processes} worker processes ready\n".encode()
            )

        async def readyz() -> Response:
            ready = self._ready()
            text = f"{ready} of {self.processes} worker processes ready\n".encode()
            return Response(200 if ready == self.processes else 503, text)

        return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}

    def _ready(self) -> int:
        return sum(1 for child in self.children if child.ready and child.alive())

    async def _scrape(self, child: _Child, into: dict[int, list[Any]]) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = await fetch_metrics(child.port)
            into[child.index] = list(text_string_to_metric_families(text))
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError) as exc:
            # Shown as kyu_process_up 0; a child that is restarting is routine.
            self.logger.debug("metrics of worker process %d: %r", child.index, exc)


async def fetch_metrics(port: int, host: str = CHILD_METRICS_HOST) -> str:
    """GET /metrics from a child's endpoint."""
    with trio.fail_after(SCRAPE_LIMIT):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n" % host.encode())
            data = bytearray()
            while chunk := await stream.receive_some(65536):
                data += chunk
                if len(data) > MAX_SCRAPE:
                    raise ValueError(f"more than {MAX_SCRAPE} bytes")
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ValueError(f"answered {head[:40]!r}")
    return body.decode("utf-8")


class _Families(Collector):
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterable[Any]:
        return self._families


def merge_metrics(scrapes: Mapping[int, list[Any]], restarts: Mapping[int, int]) -> bytes:
    """One exposition of every child's families: each sample gains a ``process`` label
    (the child's index), each family's HELP and TYPE appear once; plus
    ``kyu_process_up`` and ``kyu_process_restarts_total`` per child."""
    from prometheus_client import generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.samples import Sample

    merged: dict[str, Metric] = {}
    for index in sorted(scrapes):
        for family in scrapes[index]:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                labels = {**sample.labels, "process": str(index)}
                into.samples.append(
                    Sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
                )
    up = GaugeMetricFamily(
        "kyu_process_up",
        "1 if the supervisor read this worker process's metrics in this "
        "scrape, else 0 (starting, restarting or not answering)",
        labels=["process"],
    )
    restarted = CounterMetricFamily(
        "kyu_process_restarts",
        "Times the supervisor restarted this worker process after it exited unexpectedly",
        labels=["process"],
    )
    for index in sorted(restarts):
        up.add_metric([str(index)], 1.0 if index in scrapes else 0.0)
        restarted.add_metric([str(index)], restarts[index])
    families = [*merged.values(), up, restarted]
    return generate_latest(_Families(families))


__all__ = ["CHILD_ENV", "Supervisor", "WorkerProcess", "cpu_count", "merge_metrics"]
