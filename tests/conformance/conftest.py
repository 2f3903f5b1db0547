from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kyu_trio import MemoryBroker, MemoryStore
from kyu_trio._broker._redis import RedisBroker
from kyu_trio._store._postgres import PostgresStore


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        s: Any = MemoryStore()
    else:
        s = PostgresStore(request.getfixturevalue("pg_dsn"), pool_size=4)
    await s.open()
    yield s
    await s.close()


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        b: Any = MemoryBroker()
    else:
        b = RedisBroker(request.getfixturevalue("redis_url"), pool_size=4)
    await b.open()
    yield b
    await b.close()
