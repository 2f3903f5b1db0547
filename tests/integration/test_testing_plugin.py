"""The pytest plugin, as a user's project meets it: loaded by its entry point, in a pytest
of its own (a subprocess, so that its session-scoped servers are its own too).

The docs page "Testing your app" includes examples/testing_app/, which runs here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KYU_", "PYTEST_")) or k == "KYU_DEV_SERVERS"
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_docs_example_app_passes_its_tests() -> None:
    """docs/how-to/testing.md includes both files."""
    for name in ("app.py", "test_app.py"):
        assert (ROOT / "examples" / "testing_app" / name).is_file()
    result = run_pytest("examples/testing_app", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout, result.stdout


USER_TESTS = """
import psycopg
import pytest
import redis
import trio

from kyu_trio import Config, Queue
from kyu_trio.testing import drain

pytestmark = pytest.mark.trio
SEEN = {}


def queue_keys(config):
    client = redis.Redis.from_url(config.redis_url)
    try:
        return client.keys(config.queue_name + "*")
    finally:
        client.close()


def databases(servers):
    with psycopg.connect(servers.dsn) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


@pytest.mark.parametrize("n", [1, 2])
async def test_own_database_and_queue(kyu_config: Config, kyu_servers, n: int) -> None:
    for config in SEEN.values():  # an earlier test's: dropped and deleted
        assert config.dsn.rsplit("/", 1)[1] not in databases(kyu_servers)
        assert queue_keys(config) == []
    assert kyu_config.metrics_port == 0 and kyu_config.redis_url == kyu_servers.redis_url
    queue = Queue(kyu_config)
    queue.register("noop", lambda payload: None)
    async with queue:
        await queue.enqueue("noop", str(n))
        await queue.enqueue("noop", "later", scheduled_at=queue._clock.now().replace(year=2100))
        assert [j.payload for j in await drain(queue)] == [str(n)]
    assert queue_keys(kyu_config) != []
    SEEN[n] = kyu_config
    print("\\nDATA_DIR", kyu_servers.data_dir)
    assert len({c.dsn for c in SEEN.values()}) == len({c.queue_name for c in SEEN.values()}) == n


async def test_memory_fixture_is_fresh(kyu_memory_queue) -> None:
    assert not kyu_memory_queue.connected and kyu_memory_queue.config.metrics_port == 0
"""


def test_fixtures_in_a_project_of_its_own(tmp_path: Path) -> None:
    """Each test gets its own database and queue name, dropped and deleted afterwards;
    the servers go away with the session."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    result = run_pytest("-s", "test_user.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout
    data_dirs = set(re.findall(r"^DATA_DIR (\S+)$", result.stdout, re.M))
    assert len(data_dirs) == 1, result.stdout  # one pair of servers for the session
    assert not Path(data_dirs.pop()).exists()  # deleted at its end


def test_plugin_loads_lightly_and_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "test_nothing.py").write_text(
        textwrap.dedent("""
        import sys

        def test_nothing_started():
            assert "kyu_trio.pytest_plugin" in sys.modules
            assert not any(m in sys.modules for m in ("kyu_trio._dev", "kyu_trio._servers"))
    """)
    )
    loaded = run_pytest("test_nothing.py", cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    off = run_pytest("-p", "no:kyu_trio", "--fixtures", "test_nothing.py", cwd=tmp_path)
    assert off.returncode == 0 and "kyu_config" not in off.stdout, off.stdout
    on = run_pytest("--fixtures", "test_nothing.py", cwd=tmp_path)
    assert "kyu_config" in on.stdout and "kyu_memory_queue" in on.stdout, on.stdout
