"""`RedisBroker`: the `Broker` on Redis through redis-py.

Each queue is one sorted set keyed by the queue name, holding job ids only. redis-py's
calls block, so each runs in a worker thread through a `trio.CapacityLimiter` sized to
the connection pool. Nothing here is the source of truth: PostgreSQL is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.exceptions
import trio

from .._dsn import mask_password, redis_address
from .._errors import KyuConnectionError, KyuError
from .._ports import Ready
from .._score import score

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
# Longer than any blocking pop we issue, so a live but idle connection never times out.
SOCKET_TIMEOUT = 15.0


def marker_key(queue: str) -> str:
    # '~' is not allowed in queue names, so no queue's set can collide with a marker.
    return f"{queue}:~epoch"



def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def _popped(reply: Any) -> dict[str, float]:
    """ZPOPMIN's raw reply as {id: score}: pairs under RESP3, a flat list under RESP2."""
    if reply and isinstance(reply[0], list):
        return {member.decode(): float(score) for member, score in reply}
    return {member.decode(): float(score)
            for member, score in zip(reply[::2], reply[1::2], strict=True)}

class RedisBroker:
    """Ready job ids in Redis sorted sets; lowest score pops first."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self._url = url
        self._address = redis_address(url)
        self._pool_size = pool_size
        self._client: redis.Redis | None = None
        self._limiter = trio.CapacityLimiter(pool_size)

    def _connection_error(self, exc: BaseException) -> KyuConnectionError:
        return KyuConnectionError(
            f"Redis at {self._address} is unreachable or went away: "
            f"{mask_password(str(exc)) or type(exc).__name__}"
        )

    async def _run(self, fn: Callable[[redis.Redis], T]) -> T:
        client = self._client
        if client is None:
            raise KyuError("the Redis broker is not open")
        try:
            return await trio.to_thread.run_sync(fn, client, limiter=self._limiter)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise self._connection_error(exc) from None

    async def open(self) -> None:
        pool = redis.BlockingConnectionPool.from_url(
            self._url, max_connections=self._pool_size, timeout=30,
            socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
            health_check_interval=30,
        )
        client = redis.Redis(connection_pool=pool)
        # The reply as sent ([member, score, member, score, ...]): redis-py's own callback
        # builds a tuple per member and converts each score through several calls, which
        # cost more than the pop itself on the hot path.
        client.set_response_callback("ZPOPMIN", _raw_reply)
        try:
            await trio.to_thread.run_sync(client.ping)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            await trio.to_thread.run_sync(client.close)
            raise self._connection_error(exc) from None
        except redis.exceptions.RedisError as exc:
            await trio.to_thread.run_sync(client.close)
            raise KyuConnectionError(
                f"Redis at {self._address} refused us: {mask_password(str(exc))}"
            ) from None
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await trio.to_thread.run_sync(client.close)

    async def push(self, queue: str, entries: Sequence[Ready]) -> None:
        if entries:
            await trio.to_thread.run_sync(self.push_blocking, queue, entries,
                                          limiter=self._limiter)

    def push_blocking(self, queue: str, entries: Sequence[Ready]) -> None:
        client = self._client
        if client is None:
            raise KyuError("the Redis broker is not open")
        if not entries:
            return
        try:
            client.zadd(queue, {e.id: score(e.priority, e.seq) for e in entries})
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise self._connection_error(exc) from None

    async def pop(self, queue: str, count: int) -> dict[str, float]:
        return _popped(await self._run(lambda r: r.zpopmin(queue, count)))

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

        return await self._run(wait_then_take)

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
