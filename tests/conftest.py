"""Shared fixtures. Each test run gets its own PostgreSQL database (created, then dropped)
and each test its own queue name, which is also its Redis key, so runs never see each
other's jobs.

Servers come from KYU_TEST_PG_ADMIN / KYU_TEST_REDIS_URL, else the local defaults
(127.0.0.1:5432 database ``test``, 127.0.0.1:6379). When a default one is not usable as
it is (not running, or asking for a password), or always with KYU_TEST_SERVERS=dev, the
run starts a throwaway server in its place (`kyu_trio._servers`, the code of ``kyu-trio
dev``) and exports its address in those variables for the processes the tests start;
nothing of the system is changed.

Every test that uses a fixture needing servers is marked ``integration``, so
``pytest -m "not integration"`` runs the server-free tests alone (and starts nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from kyu_trio import Config, Queue
from kyu_trio._servers import DevServerError, PostgresServer, RedisServer
from kyu_trio._servers import free_port as free_port

PG_ADMIN = os.environ.get("KYU_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KYU_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Fixtures that need a server: a test whose fixtures include one (directly or through
#: another fixture) is marked ``integration``.
SERVER_FIXTURES = frozenset(
    {
        "pg_dsn",
        "redis_url",
        "throwaway_redis",
        "password_redis",  # this file, test_security
        "fault_pg",
        "fault_redis",  # tests/faults
        "kyu_servers",  # the pytest plugin (kyu_config uses it)
    }
)
#: Parametrized fixtures that need a server for some of their values (tests/conformance).
SERVER_PARAMS = {"store": "postgres", "broker": "redis"}

# Throwaway servers standing in for shared ones that are not usable, and the directory
# of this run's other throwaway servers; all deleted at the end of the run.
_STAND_INS: list[PostgresServer | RedisServer] = []
_SCRATCH: Path | None = None


def _dsn_for(db: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(PG_ADMIN)
    params["dbname"] = db
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


# ---- the shared servers, or stand-ins -------------------------------------------------


def _pg_usable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _redis_usable(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def _may_run_integration(config: pytest.Config) -> bool:
    """False when the mark expression leaves out every ``integration`` test."""
    markexpr = config.getoption("markexpr", "") or ""
    if not markexpr:
        return True
    try:
        from _pytest.mark.expression import Expression
    except ImportError:  # pytest moved it: start servers rather than guess
        return True
    expression = Expression.compile(markexpr)
    # An integration test, whatever its other marks (all of them, or none).
    return any(
        expression.evaluate(lambda name, /, others=others, **_: name == "integration" or others)
        for others in (True, False)
    )


def pytest_configure(config: pytest.Config) -> None:
    global PG_ADMIN, REDIS_URL
    if not _may_run_integration(config):
        return
    from kyu_trio import _dev

    mode = _dev.mode_from_env()
    forced = os.environ.get("KYU_TEST_SERVERS", "auto") == "dev"

    def stand_in(
        variable: str,
        address: str,
        usable: Callable[[str], bool],
        make: Callable[[], PostgresServer | RedisServer],
    ) -> str:
        if variable in os.environ or (not forced and usable(address)):
            return address
        server = make()
        _STAND_INS.append(server)
        server.start()
        kind, address = (
            ("PostgreSQL", server.dsn)
            if isinstance(server, PostgresServer)
            else ("Redis", server.url)
        )
        why = "KYU_TEST_SERVERS=dev" if forced else f"the shared {kind} is not usable"
        print(f"tests: {why}: a throwaway {kind} runs on port {server.port} ({server.source})")
        os.environ[variable] = address
        return address

    def postgres() -> PostgresServer:
        pg_bin, source = _dev.find_postgres(mode)
        return PostgresServer(pg_bin, source=source)

    def redis_server() -> RedisServer:
        exe, source = _dev.find_redis(mode)
        return RedisServer(exe, source=source)

    try:
        PG_ADMIN = stand_in("KYU_TEST_PG_ADMIN", PG_ADMIN, _pg_usable, postgres)
        REDIS_URL = stand_in("KYU_TEST_REDIS_URL", REDIS_URL, _redis_usable, redis_server)
    except DevServerError as exc:
        _close_stand_ins()
        raise pytest.UsageError(
            f"no usable test servers: {exc} (or set KYU_TEST_PG_ADMIN/KYU_TEST_REDIS_URL, "
            'or run the server-free tests alone: pytest -m "not integration")'
        ) from None


def _close_stand_ins() -> None:
    while _STAND_INS:
        _STAND_INS.pop().close()


def pytest_unconfigure(config: pytest.Config) -> None:
    try:
        _close_stand_ins()
    finally:
        if _SCRATCH is not None:
            shutil.rmtree(_SCRATCH, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if names & SERVER_FIXTURES or any(params.get(k) == v for k, v in SERVER_PARAMS.items()):
            item.add_marker(pytest.mark.integration)


# ---- fixtures ---------------------------------------------------------------------


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
def queue_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue of this test's own; its Redis keys, and those of the queues a test names
    after it (``name + "-b"``), are deleted afterwards."""
    name = f"kyu:test-{uuid.uuid4().hex[:12]}"
    yield name
    if "redis_url" not in request.fixturenames:
        return  # this test never had Redis
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        # The name is "kyu:test-" and hex digits: nothing in it is a glob pattern.
        keys = list(client.scan_iter(match=f"{name}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.exceptions.RedisError:
        pass  # a test may stop its Redis; the next run's keys are its own anyway
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def run_example(
    pg_dsn: str, redis_url: str, queue_name: str
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``examples/<name>`` against this run's database and Redis, on the test's own
    queue (KYU_DSN, KYU_REDIS_URL, KYU_QUEUE); assert it exited 0; return the process."""

    def run(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KYU_DSN": pg_dsn,
            "KYU_REDIS_URL": redis_url,
            "KYU_QUEUE": queue_name,
            "PYTHONIOENCODING": "utf-8",
        }
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / name), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return proc

    return run


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


def _scratch_dir(prefix: str) -> Path:
    """A new directory inside this run's scratch directory, deleted at the end of the run
    even if the test forgets to."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="kyu-tests-"))
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_SCRATCH))


class ThrowawayRedis(RedisServer):
    """A Redis server of our own on a free port, to flush, kill and restart freely:
    `stop` kills it (SIGKILL), `start` brings it back empty on the same port."""

    def __init__(self, password: str | None = None) -> None:
        from kyu_trio import _dev

        try:
            exe, source = _dev.find_redis(_dev.mode_from_env())
        except DevServerError as exc:
            pytest.skip(str(exc))
        super().__init__(exe, source=source, password=password, directory=_scratch_dir("redis-"))

    def stop(self) -> None:
        self.kill()


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()
