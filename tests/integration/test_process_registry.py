"""Which processes serve a queue, against real servers: two worker processes record
themselves (host, pid, workers, the leader), a clean stop deletes the process's row at
once, a killed process drops out three leader intervals after its last record, and
`Queue`, `Client`, `AsyncioClient` and ``kyu-trio processes`` all see the same."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from click.testing import CliRunner

from kyu_trio import AsyncioClient, Client, Config, ProcessInfo, Queue
from kyu_trio._cli import cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.5

APP = """
import sys
import trio
from kyu_trio import Config, Queue

queue = Queue(Config(
    dsn=sys.argv[1], redis_url=sys.argv[2], queue_name=sys.argv[3], workers=int(sys.argv[4]),
    metrics_port=0, leader_interval=float(sys.argv[5]), shutdown_grace=1.0,
))


async def main() -> None:
    await queue.serve()
    print("serve returned", flush=True)

trio.run(main)
"""


@pytest.fixture
def start(pg_dsn: str, redis_url: str, queue_name: str) -> Iterator[Callable[[int], Any]]:
    procs: list[subprocess.Popen[str]] = []

    def start(workers: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", APP, pg_dsn, redis_url, queue_name, str(workers),
             str(INTERVAL)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


async def listed_until(
    queue: Queue, check: Callable[[list[ProcessInfo]], bool], what: str
) -> list[ProcessInfo]:
    with trio.move_on_after(30):
        while True:
            found = await queue.processes()
            if check(found):
                return found
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {await queue.processes()}")


def rows_of(pg_dsn: str, queue_name: str) -> list[str]:
    """Every row of the queue in the table, expired or not."""
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT process_id FROM kyu_processes WHERE queue = %s", (queue_name,)
        ).fetchall()
    return sorted(r[0] for r in rows)


async def test_processes_lists_serving_processes_and_the_leader(
    make_config: Callable[..., Config], pg_dsn: str, queue_name: str, start: Any
) -> None:
    config = make_config()
    first = start(3)
    async with Queue(config) as queue:
        await listed_until(queue, lambda found: len(found) == 1, "the first process")
        second = start(5)
        found = await listed_until(queue, lambda found: len(found) == 2, "both processes")
        by_pid = {p.pid: p for p in found}
        assert set(by_pid) == {first.pid, second.pid}
        assert (by_pid[first.pid].workers, by_pid[second.pid].workers) == (3, 5)
        assert {p.host for p in found} == {socket.gethostname()}
        assert [p.pid for p in found] == [first.pid, second.pid]  # oldest first
        assert all(p.process_id.startswith(f"{p.host}:{p.pid}:") for p in found)
        # The leader is the lease's holder: the first process, which started alone.
        assert [p.leader for p in found] == [True, False]
        with psycopg.connect(pg_dsn) as conn:
            holder = conn.execute(
                "SELECT holder FROM kyu_leaders WHERE queue = %s", (queue_name,)
            ).fetchone()
        assert holder == (by_pid[first.pid].process_id,)

        # The clients read the same rows.
        def with_client() -> list[ProcessInfo]:
            with Client(config) as client:
                return client.processes()

        async def with_asyncio_client() -> list[ProcessInfo]:
            async with AsyncioClient(config) as client:
                return await client.processes()

        for answer in (
            await trio.to_thread.run_sync(with_client),
            await trio.to_thread.run_sync(asyncio.run, with_asyncio_client()),
        ):
            assert [(p.process_id, p.pid, p.workers, p.started_at, p.leader) for p in answer] == [
                (p.process_id, p.pid, p.workers, p.started_at, p.leader) for p in found
            ]
        # And the CLI, as a table and as JSON.
        env = {"KYU_DSN": config.dsn, "KYU_REDIS_URL": config.redis_url, "KYU_QUEUE": queue_name}
        result = await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(cli, ["processes"], env=env, catch_exceptions=False)
        )
        lines = result.output.splitlines()
        assert lines[0].split() == [
            "process", "host", "pid", "workers", "started", "last", "seen", "leader",
        ]  # fmt: skip
        assert [line.split()[2:4] for line in lines[2:]] == [
            [str(first.pid), "3"],
            [str(second.pid), "5"],
        ]
        assert lines[2].endswith("yes") and not lines[3].endswith("yes")
        result = await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(cli, ["processes", "--json"], env=env)
        )
        data = json.loads(result.output)
        assert [(d["pid"], d["workers"], d["leader"]) for d in data] == [
            (first.pid, 3, True),
            (second.pid, 5, False),
        ]
        assert set(data[0]) == {
            "process_id", "host", "pid", "workers", "started_at", "last_seen", "leader",
        }  # fmt: skip

        # A clean stop (SIGTERM) deletes the row at once, and the role passes on.
        first.send_signal(signal.SIGTERM)
        out, err = await trio.to_thread.run_sync(lambda: first.communicate(timeout=30))
        assert first.returncode == 0 and "serve returned" in out, err
        assert rows_of(pg_dsn, queue_name) == [by_pid[second.pid].process_id]
        found = await listed_until(
            queue, lambda found: [p.leader for p in found] == [True], "the second to lead"
        )
        assert [p.pid for p in found] == [second.pid]

        # A killed process cannot delete its row: it drops out once the row expires
        # (three leader intervals after its last record), and stays in the table until
        # the leader's pruner deletes it an hour later.
        second.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(second.wait)
        await listed_until(queue, lambda found: found == [], "the killed process to drop out")
        assert rows_of(pg_dsn, queue_name) == [by_pid[second.pid].process_id]


def test_kyu_trio_processes_without_processes(pg_dsn: str, redis_url: str, queue_name: str) -> None:
    env = {"KYU_DSN": pg_dsn, "KYU_REDIS_URL": redis_url, "KYU_QUEUE": queue_name}
    result = CliRunner().invoke(cli, ["processes"], env={**os.environ, **env})
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"no process serves queue {queue_name} (start one with kyu-trio worker)\n"
    )
    result = CliRunner().invoke(cli, ["processes", "--json"], env={**os.environ, **env})
    assert (result.exit_code, result.output) == (0, "[]\n")
