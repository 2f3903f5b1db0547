"""Fixtures of the fault-injection suite.

The suite never touches the shared servers (5432/6379): it starts a throwaway PostgreSQL
cluster (one per session, ~1-2 s to start) and a throwaway redis-server per test, both on
free ports, and kills and restarts them at will. Worker processes are
``python -m tests.faults.worker``; every one a test starts is killed at its end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from kyu_trio import _dev
from kyu_trio._servers import DevServerError
from tests.faults.harness import (
    EXEC_TABLE_DDL,
    FaultEnv,
    FaultRedis,
    ThrowawayPostgres,
    find_pg_bindir,
)


@pytest.fixture(scope="session")
def fault_pg() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of the suite's own, with the ``kyu_fault_exec`` side table."""
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip(
            "tests/faults needs the PostgreSQL server binaries (initdb, pg_ctl): install "
            "postgresql or set KYU_FAULTS_PG_BINDIR"
        )
    try:  # the system's redis-server, else the embedded Valkey, as `kyu-trio dev` finds it
        _dev.find_redis(_dev.mode_from_env())
    except DevServerError as exc:
        pytest.skip(f"tests/faults needs a Redis server binary: {exc}")
    server = ThrowawayPostgres(bindir)
    try:
        server.start()
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(EXEC_TABLE_DDL)
            conn.execute("CREATE INDEX IF NOT EXISTS kyu_fault_exec_job ON kyu_fault_exec (job_id)")
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fault_redis() -> Iterator[FaultRedis]:
    server = FaultRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(fault_pg: ThrowawayPostgres, fault_redis: FaultRedis, tmp_path: Path) -> Iterator[FaultEnv]:
    fault_pg.ensure_running()  # a failed earlier test may have left it down
    world = FaultEnv(fault_pg, fault_redis, f"kyu:fault-{uuid.uuid4().hex[:10]}", tmp_path)
    try:
        yield world
    finally:
        world.kill_all()
