"""``kyu-trio delete``, ``cron-run`` and ``processes`` against real servers, in-process
through click's CliRunner (``processes`` with serving processes is in
test_process_registry.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import trio
from click.testing import CliRunner, Result

from kyu_trio import Config, JobStatus, ProcessInfo, Queue
from kyu_trio._cli import cli
from kyu_trio._cron import new_cron_entry

pytestmark = pytest.mark.integration


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart by itself


@pytest.fixture
def kyu(pg_dsn: str, redis_url: str, queue_name: str) -> Callable[..., Result]:
    env = {"KYU_DSN": pg_dsn, "KYU_REDIS_URL": redis_url, "KYU_QUEUE": queue_name}

    def invoke(*args: str) -> Result:
        return _runner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


def fails(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    line = result.stderr.rstrip("\n")
    assert "\n" not in line and line.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in line, line


def test_delete(kyu: Callable[..., Result], make_config: Callable[..., Config]) -> None:
    queue = Queue(make_config())

    async def setup() -> tuple[str, str]:
        async with queue:
            done, held = await queue.enqueue("t"), await queue.enqueue("t")
            # Held by a worker: running (its claim, without running anything).
            store = queue._context().store
            await store.claim_jobs(queue.config.queue_name, [held], "w1", datetime.now(UTC))
            return done, held

    pending, running = trio.run(setup)
    result = kyu("delete", pending)
    assert (result.exit_code, result.stdout) == (0, f"deleted {pending}\n")
    fails(kyu("delete", pending), f"no job with id {pending}")
    fails(kyu("delete", running), "is running", f"cancel it first (kyu-trio cancel {running})")
    assert kyu("cancel", running).exit_code == 0
    assert kyu("delete", running).stdout == f"deleted {running}\n"
    fails(kyu("delete", "nonsense"), "not a job id")


def test_cron_run(
    kyu: Callable[..., Result], make_config: Callable[..., Config], queue_name: str
) -> None:
    queue = Queue(make_config())
    entry = new_cron_entry("0 3 * * *", "report", {"full": True}, name="nightly", priority=4)

    async def record() -> datetime:
        async with queue:
            store = queue._context().store
            now = datetime.now(UTC)
            fence = await store.lead(queue_name, "leader", now, 60.0)
            assert await store.sync_cron(queue_name, [entry], now, fence)
            [state] = await queue.cron_entries()
            return state.last_tick

    last_tick = trio.run(record)
    result = kyu("cron-run", "nightly")
    assert result.exit_code == 0, result.stderr
    job_id = result.stdout.strip()

    async def check() -> None:
        async with queue:
            job = await queue.inspect(job_id)
            assert (job.job_type, job.payload, job.priority) == ("report", {"full": True}, 4)
            assert job.status is JobStatus.PENDING
            [state] = await queue.cron_entries()
            assert state.last_tick == last_tick

    trio.run(check)
    fails(kyu("cron-run", "daily"), f"queue {queue_name!r} has no cron entry named 'daily'")


def test_processes_table_and_json(
    kyu: Callable[..., Result], make_config: Callable[..., Config], queue_name: str
) -> None:
    queue = Queue(make_config())
    now = datetime.now(UTC)
    rows = [
        ProcessInfo("web-1:10:aaaa", "web-1", 10, 8, now - timedelta(hours=1), now),
        ProcessInfo("web-2:20:bbbb", "web-2", 20, 16, now - timedelta(minutes=5), now),
    ]

    async def record() -> None:
        async with queue:
            store = queue._context().store
            for row in rows:
                await store.record_process(queue_name, row, 60.0)
            await store.lead(queue_name, "web-2:20:bbbb", now, 60.0)

    trio.run(record)
    lines = kyu("processes").stdout.splitlines()
    assert [line.split()[:4] for line in lines[2:]] == [
        ["web-1:10:aaaa", "web-1", "10", "8"],
        ["web-2:20:bbbb", "web-2", "20", "16"],
    ]
    assert not lines[2].endswith("yes") and lines[3].endswith("yes")
    data = json.loads(kyu("processes", "--json").stdout)
    assert [(d["process_id"], d["workers"], d["leader"]) for d in data] == [
        ("web-1:10:aaaa", 8, False),
        ("web-2:20:bbbb", 16, True),
    ]
    assert datetime.fromisoformat(data[0]["started_at"]) == rows[0].started_at
