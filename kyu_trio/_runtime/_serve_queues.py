"""`serve_queues`: several `Queue`s served by one process, as ``kyu-trio worker app:a
app:b`` does, with one metrics endpoint and one signal watcher for all of them.

Each queue runs its own `Queue.serve` (workers, leader campaign, sampler, listener), with
neither an endpoint nor a signal receiver of its own: a second receiver would take the
signals from the first, and a second endpoint would need a second port.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import partial

import attrs
import trio

from .._errors import ConfigError, KyuError
from ._http import serve_http
from ._queue import Queue
from ._serve import crash, metrics_listeners, metrics_routes, watch_signals


async def serve_queues(
    *queues: Queue,
    metrics_host: str | None = None,
    metrics_port: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every queue in this process until SIGINT/SIGTERM, then stop them all
    gracefully and return; each queue is served as by `Queue.serve`, with its own
    `Config` (workers, DSN, Redis: the same or different servers).

    One endpoint serves ``/metrics`` (every queue's samples, each labelled with its
    ``queue``), ``/healthz`` and ``/readyz`` (ready when every queue reaches its
    PostgreSQL and Redis) on ``metrics_host:metrics_port``, by default the first queue's
    ``Config.metrics_host`` and ``Config.metrics_port`` (0: no endpoint); the queues'
    own ``metrics_port`` settings are not used. One signal watcher serves them all: the
    first signal lets every queue's running jobs finish, a second requeues them at once.

    They stop together: when one stops (its `Queue.shutdown`, or a signal) the others
    are shut down gracefully too; an unexpected error in one stops the others at once
    (their running jobs are requeued, as in a crash of one queue), is logged, and is
    raised (the error itself when it is the only one, else the group). Each queue needs
    a name of its own (``Config.queue_name``: their metrics and logs are told apart by
    it), and none may be serving already (else `ConfigError`, `KyuError`).

    Example::

        emails = Queue(Config(queue_name="emails", workers=20))
        reports = Queue(Config(queue_name="reports", workers=2))
        trio.run(serve_queues, emails, reports)
    """
    check_queues(queues)
    # Validated as Config fields are (a bad port is a ConfigError naming it).
    first = queues[0].config
    config = attrs.evolve(
        first,
        metrics_host=first.metrics_host if metrics_host is None else metrics_host,
        metrics_port=first.metrics_port if metrics_port is None else metrics_port,
    )
    log = first.logger
    group = _Group(queues)
    # Bound before connecting, as Queue.serve does: a taken port is one MetricsPortError.
    async with metrics_listeners(config) as listeners:
        try:
            async with trio.open_nursery() as nursery:
                if threading.current_thread() is threading.main_thread():
                    grace = max(queue.config.shutdown_grace for queue in queues)
                    await nursery.start(watch_signals, log, grace, group.shutdown, group.cancel)
                async with trio.open_nursery() as serving:
                    for queue in queues:
                        if not group.stopping:
                            await serving.start(group.serve, queue)
                    # A queue that stopped already (its own shutdown() during start-up)
                    # is closed, and is stopping the others: then no endpoint is needed.
                    contexts = [queue._context() for queue in group.active if queue.connected]
                    if listeners and len(contexts) == len(queues):
                        routes = metrics_routes(contexts)
                        await nursery.start(
                            partial(
                                serve_http,
                                config.metrics_host,
                                config.metrics_port,
                                routes,
                                log,
                                listeners=listeners,
                            )
                        )
                    if len(queues) > 1:
                        names = ", ".join(repr(queue.config.queue_name) for queue in queues)
                        log.info("serving %d queues in this process: %s", len(queues), names)
                    task_status.started()
                # Every queue has stopped: so do the endpoint and the signal watcher.
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            # The queue that crashed has logged its error; raise it rather than a group.
            crashed = crash(exc)
            if crashed is None or crashed is exc:
                raise
            raise crashed from exc


def check_queues(queues: Sequence[Queue]) -> None:
    """Raise unless ``queues`` can be served together by `serve_queues` (before anything
    connects, so that the CLI can check its APPs before it starts worker processes)."""
    if not queues:
        raise ConfigError("serve_queues needs at least one Queue")
    names: dict[str, int] = {}
    for i, queue in enumerate(queues):
        if not isinstance(queue, Queue):
            raise TypeError(f"serve_queues takes Queue objects, got {queue!r}")
        if any(other is queue for other in queues[:i]):
            raise ConfigError(f"{queue!r} is given twice: serve each queue once")
        name = queue.config.queue_name
        if name in names:
            raise ConfigError(
                f"two of the queues are named {name!r} (Config.queue_name, or KYU_QUEUE "
                "through Config.from_env): give each queue served in one process its own name"
            )
        names[name] = i
        if queue._serving is not None:
            raise KyuError(f"{queue!r} is already serving: serve each queue once")


@attrs.define(eq=False)
class _Group:
    """The queues of one `serve_queues` call, which stop together."""

    queues: Sequence[Queue]
    #: Those started (or starting) and not yet stopped.
    active: list[Queue] = attrs.Factory(list)
    stopping: bool = False

    async def serve(
        self, queue: Queue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.active.append(queue)
        try:
            await queue._serve([], watch_signals=False, task_status=task_status)
        finally:
            # Not asked to stop once stopped: shutdown() would carry over to its next serve.
            self.active.remove(queue)
        # It returned, so it was asked to stop (its shutdown(), or ours): all stop.
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every queue gracefully (the first signal)."""
        self.stopping = True
        for queue in self.active:
            queue.shutdown()

    def cancel(self) -> None:
        """Requeue every queue's running jobs now (a second signal)."""
        for queue in self.active:
            serving = queue._serving
            if serving is not None:
                serving.pool.cancel_jobs()


__all__ = ["check_queues", "serve_queues"]
