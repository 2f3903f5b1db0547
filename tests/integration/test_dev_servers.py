"""kyu_trio._servers, the one implementation of throwaway servers (``kyu-trio dev``, the
pytest plugin, this suite's stand-ins and fault harness), and the test run's fallback to
them when the shared servers are not usable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from kyu_trio import _dev
from kyu_trio._servers import DevServerError, PostgresServer, RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _postgres() -> PostgresServer:
    try:
        pg_bin, source = _dev.find_postgres(_dev.mode_from_env())
    except DevServerError as exc:
        pytest.skip(str(exc))
    return PostgresServer(pg_bin, source=source, settings={"max_connections": "33"})


def _redis(password: str | None = None) -> RedisServer:
    try:
        exe, source = _dev.find_redis(_dev.mode_from_env())
    except DevServerError as exc:
        pytest.skip(str(exc))
    return RedisServer(exe, source=source, password=password)


def _setting(dsn: str, name: str) -> str:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def test_postgres_stops_restarts_and_leaves_nothing() -> None:
    pg = _postgres()
    pg.start()
    try:
        directory = pg.directory
        assert directory is not None and pg.running()
        assert _setting(pg.dsn, "max_connections") == "33"  # settings merge over defaults
        assert _setting(pg.dsn, "fsync") == "off"
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE kept")
        pg.restart()  # same port and settings (postgresql.conf), data kept
        assert _setting(pg.dsn_for("kept"), "max_connections") == "33"
        pg.stop()
        assert not pg.running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.dsn, connect_timeout=2)
        pg.start()  # the cluster again, not a new one
        assert _setting(pg.dsn_for("kept"), "port") == str(pg.port)
    finally:
        pg.close()
    assert not directory.exists() and not pg.running()
    pg.close()  # twice is fine


def test_redis_password_kill_and_restart_empty() -> None:
    rd = _redis(password="s3cret")
    rd.start()
    try:
        assert rd.url == f"redis://:s3cret@127.0.0.1:{rd.port}/0"
        assert re.fullmatch(r"\d+\.\d+\.\d+", rd.version) and rd.name in ("Redis", "Valkey")
        client = redis.Redis.from_url(rd.url)
        client.set("k", "v")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=rd.port).ping()
        rd.kill()
        assert not rd.running()
        rd.start()  # same port, empty
        assert client.get("k") is None
        client.close()
    finally:
        rd.close()


def test_the_test_run_starts_throwaway_servers_when_told() -> None:
    """KYU_TEST_SERVERS=dev stands in for shared servers that are not usable: the run
    starts its own, exports them to the processes it starts, and deletes them."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("KYU_TEST_PG_ADMIN", "KYU_TEST_REDIS_URL")
    }
    env["KYU_TEST_SERVERS"] = "dev"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_cli.py",
            "-k",
            "test_migrate_fresh_database or test_enqueue_inspect or test_worker_runs_jobs",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ports = re.findall(r"a throwaway (PostgreSQL|Redis) runs on port (\d+)", result.stdout)
    assert {kind for kind, _ in ports} == {"PostgreSQL", "Redis"}, result.stdout
    assert "passed" in result.stdout and "5432" not in result.stdout


def test_not_integration_starts_no_server() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KYU_TEST_PG_ADMIN", "KYU_TEST_REDIS_URL")
    }
    env["KYU_TEST_SERVERS"] = "dev"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "-m",
            "not integration",
            "tests/unit/test_testing.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "throwaway" not in result.stdout and "passed" in result.stdout
