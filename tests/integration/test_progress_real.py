"""Progress on real PostgreSQL and Redis: 10,000 reports cost a handful of UPDATEs, the
last value is what every reader sees (Queue, Client, AsyncioClient's mapping, the CLI),
and a value is visible within a second while its job runs."""

from __future__ import annotations

import ast
import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from kyu_trio import AsyncioClient, Client, Config, JobStatus, Queue, current_job
from kyu_trio._cli import cli
from kyu_trio._ports import Progress
from kyu_trio._store._postgres import PostgresStore

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class CountingPostgresStore(PostgresStore):
    """Counts `set_progress` calls: each is one UPDATE statement."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, pool_size=4)
        self.updates: list[int] = []  # rows per statement

    async def set_progress(self, updates: Sequence[Progress], worker_id: str) -> list[str]:
        self.updates.append(len(updates))
        return await super().set_progress(updates, worker_id)


async def test_10000_reports_cost_a_handful_of_updates_and_clients_read_the_last_value(
    make_config: Callable[..., Config], queue_name: str
) -> None:
    config = make_config()
    store = CountingPostgresStore(config.dsn)
    queue = Queue(config, store=store)
    took: list[float] = []

    @queue.handler("import_rows")
    async def import_rows(total: int) -> str:
        start = trio.current_time()
        for done in range(1, total + 1):
            current_job().set_progress({"done": done, "total": total})
            if done % 100 == 0:
                await trio.sleep(0.01)  # some real work between reports: ~1 s in all
        took.append(trio.current_time() - start)
        return "imported"

    async with queue:
        job_id = await queue.enqueue("import_rows", 10_000)
        await queue.run_once()
        job = await queue.inspect(job_id)

    assert (job.status, job.result) == (JobStatus.COMPLETED, "imported")
    assert job.progress == {"done": 10_000, "total": 10_000}
    # At most one UPDATE per 0.5 s while it ran, plus the last value with the outcome.
    assert 1 <= len(store.updates) <= took[0] / 0.5 + 2, (store.updates, took)
    assert len(store.updates) <= 8

    async def via_asyncio() -> Any:
        async with AsyncioClient(config) as client:
            return (await client.inspect(job_id)).progress

    def read_elsewhere() -> tuple[Any, Any, str]:
        with Client(config) as client:
            seen = client.inspect(job_id).progress
        env = {"KYU_DSN": config.dsn, "KYU_REDIS_URL": config.redis_url, "KYU_QUEUE": queue_name}
        out = CliRunner().invoke(cli, ["inspect", job_id], env=env, catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return seen, asyncio.run(via_asyncio()), out.output

    seen, seen_by_asyncio, text = await trio.to_thread.run_sync(read_elsewhere)
    assert seen == seen_by_asyncio == {"done": 10_000, "total": 10_000}
    assert [
        line.split(None, 1)[1] for line in text.splitlines() if line.startswith("progress")
    ] == ['{"done": 10000, "total": 10000}']


async def test_progress_is_visible_to_a_client_within_a_second_from_each_kind_of_handler(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(workers=4)
    queue = Queue(config)
    stop = threading.Event()
    reported: dict[str, float] = {}

    @queue.handler("async")
    async def async_handler(payload: None) -> None:
        reported["async"] = time.monotonic()
        current_job().set_progress({"kind": "async"})
        await trio.to_thread.run_sync(stop.wait, 20)
        current_job().set_progress({"kind": "async", "done": True})

    @queue.handler("sync")
    def sync_handler(payload: None) -> None:
        reported["sync"] = time.monotonic()
        current_job().set_progress({"kind": "sync"})
        stop.wait(20)
        current_job().set_progress({"kind": "sync", "done": True})

    async def asyncio_handler(payload: None) -> None:
        reported["asyncio"] = time.monotonic()
        current_job().set_progress({"kind": "asyncio"})
        await asyncio.get_running_loop().run_in_executor(None, stop.wait, 20)
        current_job().set_progress({"kind": "asyncio", "done": True})

    queue.register("asyncio", asyncio_handler, asyncio=True)

    def watch(client: Client, ids: dict[str, str]) -> dict[str, float]:
        """Poll until each job shows its first progress; return how long after it was set."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 10
        while len(seen) < len(ids) and time.monotonic() < deadline:
            for kind, job_id in ids.items():
                if kind not in seen and client.inspect(job_id).progress == {"kind": kind}:
                    seen[kind] = time.monotonic() - reported[kind]
            time.sleep(0.02)
        return seen

    async with queue:
        ids = {kind: await queue.enqueue(kind, None) for kind in ("async", "sync", "asyncio")}
        with Client(config) as client:
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.serve)
                try:
                    delays = await trio.to_thread.run_sync(watch, client, ids)
                finally:
                    stop.set()
                with trio.fail_after(20):
                    while True:
                        jobs = {k: await queue.inspect(i) for k, i in ids.items()}
                        if all(j.status is JobStatus.COMPLETED for j in jobs.values()):
                            break
                        await trio.sleep(0.05)
                queue.shutdown()
            final = {kind: client.inspect(job_id).progress for kind, job_id in ids.items()}
    assert sorted(delays) == ["async", "asyncio", "sync"], delays
    assert max(delays.values()) < 1.0, delays
    # The last values were stored with the outcomes: visible as soon as they are.
    assert {k: j.progress for k, j in jobs.items()} == {k: {"kind": k, "done": True} for k in ids}
    assert final == {k: {"kind": k, "done": True} for k in ids}


def test_the_progress_example(run_example: Any) -> None:
    """examples/progress.py, shown in docs/how-to/progress.md."""
    proc = run_example("progress.py")
    lines = proc.stdout.splitlines()
    # Seen while running (at least one value short of the end), then the last one.
    imports = [
        ast.literal_eval(line.split(": ", 1)[1])
        for line in lines
        if line.startswith("import_rows: {")
    ]
    assert imports[-1] == {"done": 1000, "total": 1000}
    assert len(imports) >= 2 and imports[0]["done"] < 1000
    assert "checksum: 100" in lines
    assert "OK: progress was reported, and its last value kept" in lines
