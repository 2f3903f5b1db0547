"""Shared fixtures. Each test run gets its own PostgreSQL database (created, then dropped)
and each test its own queue name, which is also its Redis key, so runs never see each
other's jobs. Servers come from KYU_TEST_PG_ADMIN / KYU_TEST_REDIS_URL (local defaults)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis

from kyu_trio import Config, Queue

PG_ADMIN = os.environ.get("KYU_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KYU_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _dsn_for(db: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(PG_ADMIN)
    params["dbname"] = db
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A fresh database for this test run, dropped at the end."""
    name = f"kyu_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _dsn_for(name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A queue of this test's own; its Redis keys are deleted afterwards."""
    name = f"kyu:test-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.delete(name, f"{name}:~epoch")
        client.close()
    except redis.exceptions.RedisError:
        pass  # a test that never touched Redis may run where none is up


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_config(pg_dsn: str, redis_url: str, queue_name: str) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "dsn": pg_dsn,
            "redis_url": redis_url,
            "queue_name": queue_name,
            "metrics_port": 0,
            "workers": 4,
            "shutdown_grace": 5.0,
        }
        values.update(overrides)
        return Config(**values)

    return make


@pytest.fixture
async def real_queue(make_config: Callable[..., Config]) -> AsyncIterator[Queue]:
    """A connected Queue on the real servers."""
    queue = Queue(make_config())
    async with queue:
        yield queue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayRedis:
    """A redis-server of our own on a free port, to flush, kill and restart freely."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, password=self.password).ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("throwaway redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    yield server
    server.stop()
