"""`RedisBroker`: the `Broker` on Redis through redis-py.

Each queue is one sorted set keyed by the queue name, holding job ids only. redis-py's
calls block, so each runs in a worker thread through a `trio.CapacityLimiter` sized to
the connection pool, and a cancelled call stops waiting for its thread. Nothing here is
the source of truth: PostgreSQL is.

No redis-py exception leaves this module: a lost connection is a `KyuConnectionError`,
an error reply that may pass (out of memory, read-only replica, loading) a `ServerError`,
any other refusal a `CommandError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, TypeVar

import redis
import redis.exceptions
import trio

from .._dsn import mask_password, redis_address
from .._errors import CommandError, KyuConnectionError, KyuError, ServerError
from .._ports import Ready
from .._score import score
from .._waiters import (
    WAITING_CHECK_INTERVAL,
    WAITING_TTL,
    finished_channel,
    parse_finished,
    waiting_key,
)

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
# Longer than any blocking pop we issue, so a live but idle connection never times out.
# It also bounds how long a thread whose call was abandoned (see `_run`) can hang on a
# server that stopped answering.
SOCKET_TIMEOUT = 15.0
#: How long a cancelled pop may spend putting back ids whose reply came too late.
LATE_RESTORE_LIMIT = 2.0

#: Error codes of replies that waiting may cure: a worker rides them out like a lost
#: connection. OOM: maxmemory reached with noeviction. READONLY: a replica (after a
#: failover). UNBLOCKED: a blocking pop cut short when its server became a replica.
#: MISCONF: snapshots failing. LOADING: data loading after a restart. BUSY: a script
#: running. The others are cluster and replication states that settle by themselves.
TRANSIENT_CODES = frozenset({
    "OOM", "READONLY", "UNBLOCKED", "MISCONF", "LOADING", "BUSY", "MASTERDOWN",
    "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
})  # fmt: skip

# redis-py strips the code from the message of the errors it has a class for, and only
# recent versions keep it as `status_code`.
_CODE_OF: tuple[tuple[type[redis.exceptions.RedisError], str], ...] = (
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.NoPermissionError, "NOPERM"),
    (redis.exceptions.NoScriptError, "NOSCRIPT"),
    (redis.exceptions.ExecAbortError, "EXECABORT"),
)


def marker_key(queue: str) -> str:
    # '~' is not allowed in queue names, so no queue's set can collide with a marker.
    return f"{queue}:~epoch"


def parked_key(queue: str, job_type: str) -> str:
    """The set of parked ids of a limited job type ('~': no queue's set collides)."""
    return f"{queue}:~parked:{job_type}"


# ZPOPMIN from the parked set and ZADD to the queue's, in one atomic step: an id is
# always in exactly one of the two.
UNPARK = """
local moved = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
for i = 1, #moved, 2 do
    redis.call('ZADD', KEYS[2], moved[i + 1], moved[i])
end
return #moved / 2
"""


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def _popped(reply: Any) -> dict[str, float]:
    """ZPOPMIN's raw reply as {id: score}: pairs under RESP3, a flat list under RESP2."""
    if reply and isinstance(reply[0], list):
        return {member.decode(): float(score) for member, score in reply}
    return {
        member.decode(): float(score) for member, score in zip(reply[::2], reply[1::2], strict=True)
    }


def _reply_text(exc: redis.exceptions.RedisError) -> tuple[str, str]:
    """An error reply's code and its first line with the code in front, as Redis sent it."""
    text = str(exc).strip().split("\n", 1)[0]
    code = getattr(exc, "status_code", None) or next(
        (c for cls, c in _CODE_OF if isinstance(exc, cls)), None
    )
    if code is None:
        first = text.split(" ", 1)[0]
        code = first if first.isalpha() and first.isupper() else ""
    if code and not text.startswith(code):
        text = f"{code} {text}"
    return code, mask_password(text)


def redis_error(address: str, exc: redis.exceptions.RedisError) -> KyuError:
    """The KyuError for a redis-py exception (sync or asyncio: they share their classes),
    naming the server as ``address``."""
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return KyuConnectionError(f"Redis at {address} refused us: {mask_password(str(exc))}")
    if isinstance(exc, redis.exceptions.ResponseError | redis.exceptions.BusyLoadingError):
        code, text = _reply_text(exc)
        if code in TRANSIENT_CODES:
            return ServerError(f"Redis at {address} answered with an error: {text}")
        return CommandError(f"Redis at {address} refused a command: {text}")
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
                  | redis.exceptions.InvalidResponse):  # fmt: skip
        return KyuConnectionError(
            f"Redis at {address} is unreachable or went away: "
            f"{mask_password(str(exc)) or type(exc).__name__}"
        )
    # DataError and the like: what we sent was wrong before it left the process.
    return CommandError(f"Redis at {address}: {type(exc).__name__}: {mask_password(str(exc))}")


def ready_scores(entries: Sequence[Ready]) -> dict[str, float]:
    """What ZADD takes for ``entries``: id -> score."""
    return {e.id: score(e.priority, e.seq) for e in entries}


class _Handoff:
    """Hands a pop's result from its thread to the trio task, or, if the task stopped
    waiting (its call was cancelled and abandoned), tells the thread to put it back:
    popped ids are out of Redis, and nobody else would claim them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._handed: dict[str, float] | None = None

    def hand_over(self, popped: dict[str, float]) -> bool:
        """In the thread: False if the task is gone (the caller puts them back)."""
        with self._lock:
            if self._abandoned:
                return False
            self._handed = popped
            return True

    def abandon(self) -> dict[str, float]:
        """In the task, on cancellation: what the thread handed over too late (trio drops
        a result that arrives after the cancellation), to be put back by the task."""
        with self._lock:
            self._abandoned = True
            late, self._handed = self._handed, None
            return late or {}


class RedisBroker:
    """Ready job ids in Redis sorted sets; lowest score pops first."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self._url = url
        self._address = redis_address(url)
        self._pool_size = pool_size
        self._client: redis.Redis | None = None
        self._limiter = trio.CapacityLimiter(pool_size)
        #: queue -> (when we last asked, whether its waiting key existed)
        self._waiting_seen: dict[str, tuple[float, bool]] = {}
        self._wait_client: redis.Redis | None = None  # for `wait_finished`, made on first use

    def _connection_error(self, exc: BaseException) -> KyuConnectionError:
        return KyuConnectionError(
            f"Redis at {self._address} is unreachable or went away: "
            f"{mask_password(str(exc)) or type(exc).__name__}"
        )

    def _error(self, exc: redis.exceptions.RedisError) -> KyuError:
        return redis_error(self._address, exc)

    def _require(self) -> redis.Redis:
        client = self._client
        if client is None:
            raise KyuError("the Redis broker is not open")
        return client

    async def _run(self, fn: Callable[[redis.Redis], T]) -> T:
        """Run ``fn`` in a worker thread. A cancelled call stops waiting at once (its
        outcome is unknown, as with a lost connection); the thread runs on, bounded by
        the socket timeout."""
        client = self._require()
        try:
            return await trio.to_thread.run_sync(
                fn, client, limiter=self._limiter, abandon_on_cancel=True
            )
        except redis.exceptions.RedisError as exc:
            raise self._error(exc) from None

    async def open(self) -> None:
        pool = redis.BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._pool_size,
            timeout=30,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            health_check_interval=30,
        )
        client = redis.Redis(connection_pool=pool)
        # The reply as sent ([member, score, member, score, ...]): redis-py's own callback
        # builds a tuple per member and converts each score through several calls, which
        # cost more than the pop itself on the hot path.
        client.set_response_callback("ZPOPMIN", _raw_reply)
        try:
            await trio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(client.close)
            if not isinstance(exc, redis.exceptions.RedisError):
                raise
            error = self._error(exc)
            if not isinstance(error, KyuConnectionError):  # e.g. NOPERM for PING
                error = KyuConnectionError(
                    f"Redis at {self._address} refused us: {_reply_text(exc)[1]}"
                )
            raise error from None
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        waits, self._wait_client = self._wait_client, None
        if waits is not None:
            await trio.to_thread.run_sync(waits.close)
        if client is not None:
            # Closing only shuts sockets: it cannot hang on a server that stopped answering.
            await trio.to_thread.run_sync(client.close)

    async def push(self, queue: str, entries: Sequence[Ready]) -> None:
        if entries:
            await trio.to_thread.run_sync(
                self.push_blocking, queue, entries, limiter=self._limiter, abandon_on_cancel=True
            )

    def push_blocking(self, queue: str, entries: Sequence[Ready]) -> None:
        """ZADD the entries. Raises only `KyuConnectionError`: it runs right after an
        enqueue's commit, where the rows will run anyway (the reaper's sweep pushes what
        the broker lacks), so any failure, even a refusal, is one to log and repair."""
        client = self._client
        if client is None:
            raise KyuConnectionError(f"Redis at {self._address}: the broker is closed")
        if not entries:
            return
        try:
            client.zadd(queue, ready_scores(entries))
        except redis.exceptions.RedisError as exc:
            error = self._error(exc)
            if not isinstance(error, KyuConnectionError):
                error = ServerError(str(error))
            raise error from None

    async def _pop(
        self, queue: str, take: Callable[[redis.Redis], dict[str, float]]
    ) -> dict[str, float]:
        """Run a pop; if the call is cancelled, whatever it popped goes back to the set
        (from the thread, or from here if the result came back too late)."""
        handoff = _Handoff()

        def pop(r: redis.Redis) -> dict[str, float]:
            popped = take(r)
            if popped and not handoff.hand_over(popped):
                # Only the task could claim these, and it has stopped waiting. If this
                # fails too, the reaper's sweep pushes the pending rows again.
                with suppress(redis.exceptions.RedisError):
                    r.zadd(queue, popped)
                return {}
            return popped

        try:
            return await self._run(pop)
        except BaseException:
            late = handoff.abandon()
            if late:
                # Bounded: the sweep repairs what this misses, and a shutdown must not
                # wait on a server that stopped answering.
                with trio.CancelScope(shield=True) as scope, suppress(KyuError):
                    scope.deadline = trio.current_time() + LATE_RESTORE_LIMIT
                    await self._run(lambda r: r.zadd(queue, late))
            raise

    async def pop(self, queue: str, count: int) -> dict[str, float]:
        return await self._pop(queue, lambda r: _popped(r.zpopmin(queue, count)))

    async def pop_wait(self, queue: str, wait: float, count: int = 1) -> dict[str, float]:
        def wait_then_take(r: redis.Redis) -> dict[str, float]:
            item: Any = r.bzpopmin(queue, timeout=wait)
            if item is None:
                return {}
            popped = {item[1].decode(): float(item[2])}
            # Whatever else arrived with it, in the same thread call: a second hop would
            # add a thread wake-up (hundreds of µs on an idle VM) to every pickup.
            if count > 1:
                popped.update(_popped(r.zpopmin(queue, count - 1)))
            return popped

        return await self._pop(queue, wait_then_take)

    async def restore(self, queue: str, popped: dict[str, float]) -> None:
        if popped:
            mapping = dict(popped)
            await self._run(lambda r: r.zadd(queue, mapping))

    async def remove(self, queue: str, ids: Sequence[str]) -> None:
        if ids:
            await self._run(lambda r: r.zrem(queue, *ids))

    async def size(self, queue: str) -> int:
        return int(await self._run(lambda r: r.zcard(queue)))

    async def missing(self, queue: str, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        scores: list[Any] = await self._run(lambda r: r.zmscore(queue, list(ids)))
        return [job_id for job_id, s in zip(ids, scores, strict=True) if s is None]

    async def claim_epoch(self, queue: str) -> bool:
        return bool(await self._run(lambda r: r.set(marker_key(queue), "1", nx=True)))

    async def ping(self) -> None:
        await self._run(lambda r: r.ping())

    async def has_waiters(self, queue: str) -> bool:
        now = time.monotonic()
        seen = self._waiting_seen.get(queue)
        if seen is not None and now - seen[0] < WAITING_CHECK_INTERVAL:
            return seen[1]
        # Noted before asking: during an outage too, Redis is asked at most once a second.
        self._waiting_seen[queue] = (now, False)
        found = bool(await self._run(lambda r: r.exists(waiting_key(queue))))
        self._waiting_seen[queue] = (now, found)
        return found

    async def publish_finished(self, queue: str, ids: Sequence[str]) -> None:
        if ids:
            message = ",".join(ids)
            await self._run(lambda r: r.publish(finished_channel(queue), message))

    async def wait_finished(self, queue: str, ids: Sequence[str], wait: float) -> bool:
        wanted = set(ids)
        address = self._address
        self._require()
        if self._wait_client is None:
            # Connections of their own, outside the bounded pool, and threads outside its
            # limiter: a subscribed connection can do nothing else, and long waits must
            # not hold up the workers' pops and pushes.
            self._wait_client = redis.Redis.from_url(
                self._url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
            )

        def wait_for_message(client: redis.Redis) -> bool:
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(finished_channel(queue))
                client.set(waiting_key(queue), "1", ex=WAITING_TTL)
                deadline = time.monotonic() + wait
                while (left := deadline - time.monotonic()) > 0:
                    message = pubsub.get_message(timeout=left)
                    if message is not None and wanted & set(parse_finished(message["data"])):
                        return True
                return False
            finally:
                pubsub.close()

        try:
            return await trio.to_thread.run_sync(
                wait_for_message, self._wait_client, abandon_on_cancel=True
            )
        except redis.exceptions.RedisError as exc:
            raise redis_error(address, exc) from None

    async def park(self, queue: str, job_type: str, popped: dict[str, float]) -> None:
        if popped:
            mapping, key = dict(popped), parked_key(queue, job_type)
            await self._run(lambda r: r.zadd(key, mapping))

    async def unpark(self, queue: str, job_type: str, count: int) -> int:
        if count <= 0:
            return 0
        key = parked_key(queue, job_type)
        return int(await self._run(lambda r: r.eval(UNPARK, 2, key, queue, count)))
