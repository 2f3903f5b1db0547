"""Retention on the real servers (issue 13, must-hold 4): 100,000 finished jobs past their
retention are deleted by the serving leader in batches while its workers keep running
jobs, and no statement holds locks for 1 s or more.

Measured three ways: each prune statement is timed around its call (autocommit: the
statement is its transaction, so its row locks last no longer than that); another
connection samples pg_stat_activity and pg_locks every 20 ms for the age of any running
DELETE and of any wait for a lock in the test's database; and the workers' jobs, enqueued
all along, are timed from enqueue to start.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from kyu_trio import Config, JobStatus, Queue
from kyu_trio._runtime._pruner import PRUNE_BATCH
from kyu_trio._store._postgres import PostgresStore

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OLD = 100_000
YOUNG = 5_000
LIMIT = 1.0  # seconds: no statement may hold locks this long, nor anything wait this long

# 100,000 jobs that finished 40 days ago (past every default retention): 80 % completed,
# 10 % dead, 10 % cancelled; every dead one and a tenth of the others with a failed
# first run in kyu_attempts. Then 5,000 completed a day ago, which must stay.
FILL = [
    """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, scheduled_at, max_retries,
                      retry_count, attempt, job_timeout, created_at, updated_at,
                      completed_at, locked_by, locked_at)
SELECT gen_random_uuid(), %(queue)s, 'old', 'null',
       CASE i %% 10 WHEN 0 THEN 'dead' WHEN 1 THEN 'cancelled' ELSE 'completed' END,
       t, 1, 1, 2, 30, t, t + interval '1 second',
       CASE WHEN i %% 10 >= 2 THEN t + interval '1 second' END, 'w-old', t
FROM generate_series(1, %(old)s) AS i,
     LATERAL (SELECT now() - interval '40 days' - make_interval(secs => i) AS t) AS at
""",
    """
INSERT INTO kyu_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
SELECT id, 1, 'w-old', created_at, created_at, 'failed', 'E: retention test'
FROM kyu_jobs
WHERE queue = %(queue)s AND job_type = 'old' AND (status = 'dead' OR random() < 0.1)
""",
    """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, scheduled_at, max_retries,
                      job_timeout, created_at, updated_at, completed_at)
SELECT gen_random_uuid(), %(queue)s, 'young', 'null', 'completed', t, 1, 30, t, t, t
FROM generate_series(1, %(young)s) AS i,
     LATERAL (SELECT now() - interval '1 day' - make_interval(secs => i) AS t) AS at
""",
]

COUNTS = """
SELECT job_type, status, count(*) FROM kyu_jobs WHERE queue = %(queue)s
GROUP BY job_type, status
"""
OLD_ATTEMPTS = "SELECT count(*) FROM kyu_attempts WHERE error = 'E: retention test'"

# What another connection samples: the oldest running DELETE of kyu_jobs, the longest
# wait for a lock and the oldest open transaction (other than its own), in this database.
SAMPLE = """
SELECT
    (SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)
     FROM pg_stat_activity
     WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
       AND query LIKE '%%DELETE FROM kyu_jobs%%'),
    (SELECT coalesce(max(extract(epoch FROM clock_timestamp() - l.waitstart)), 0)
     FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
     WHERE NOT l.granted AND a.datname = current_database()),
    (SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)
     FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()
       AND backend_type = 'client backend')
"""


class Sampler:
    """Samples `SAMPLE` every 20 ms in a thread of its own until stopped."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._stop = threading.Event()
        self.delete_age = self.lock_wait = self.transaction_age = 0.0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(SAMPLE).fetchone()
                assert row is not None
                delete_age, lock_wait, transaction_age = (float(v) for v in row)
                self.delete_age = max(self.delete_age, delete_age)
                self.lock_wait = max(self.lock_wait, lock_wait)
                self.transaction_age = max(self.transaction_age, transaction_age)
                self.samples += 1
                self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _counts(dsn: str, queue: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(COUNTS, {"queue": queue}).fetchall()
    return {(job_type, status): n for job_type, status, n in rows}


async def test_the_leader_prunes_100k_jobs_in_short_batches_while_workers_run(
    make_config: Callable[..., Config], pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The defaults (7, 7 and 30 days), a pass every 0.2 s.
    queue = Queue(make_config(reaper_interval=0.2, workers=8))
    name = queue.config.queue_name
    waits: list[float] = []
    finished = enqueued = 0
    all_pruned, caught_up = trio.Event(), trio.Event()
    producing_stopped = False

    @queue.handler("work")
    async def work(enqueued_at: float) -> None:
        nonlocal finished
        waits.append(time.time() - enqueued_at)
        await trio.sleep(0.001)
        finished += 1
        if producing_stopped and finished >= enqueued:
            caught_up.set()

    # Every statement the pruner runs, timed around the store call (an upper bound on
    # its time in PostgreSQL: it also counts the thread hop).
    batches: list[tuple[str, int, float, float]] = []  # status, rows, seconds, ended
    original = PostgresStore.prune

    async def timed(
        store: PostgresStore, queue_: str, status: JobStatus, before: datetime, limit: int
    ) -> int:
        assert limit == PRUNE_BATCH
        start = time.perf_counter()
        deleted = await original(store, queue_, status, before, limit)
        batches.append((status.value, deleted, time.perf_counter() - start, time.perf_counter()))
        if sum(n for _, n, _, _ in batches) >= OLD:
            all_pruned.set()
        return deleted

    monkeypatch.setattr(PostgresStore, "prune", timed)

    async with queue:  # migrated: the table exists
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            filled = time.perf_counter()
            for sql in FILL:
                conn.execute(sql, {"queue": name, "old": OLD, "young": YOUNG})
            filled = time.perf_counter() - filled
            old_attempts = conn.execute(OLD_ATTEMPTS).fetchone()
        assert old_attempts is not None and old_attempts[0] > OLD // 10
        assert _counts(pg_dsn, name) == {
            ("old", "completed"): 80_000,
            ("old", "dead"): 10_000,
            ("old", "cancelled"): 10_000,
            ("young", "completed"): YOUNG,
        }

        with Sampler(pg_dsn) as sampler:
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.serve)

                async def produce() -> None:
                    nonlocal enqueued
                    while True:
                        with trio.CancelScope(shield=True):  # counted iff enqueued
                            await queue.enqueue_many([("work", time.time())] * 10)
                            enqueued += 10
                        await trio.sleep(0.02)

                async with trio.open_nursery() as producing:
                    producing.start_soon(produce)
                    with trio.fail_after(120):
                        await all_pruned.wait()
                    pruned_at = time.perf_counter()
                    during = finished
                    await trio.sleep(0.5)  # more passes: nothing left, nothing more deleted
                    producing.cancel_scope.cancel()
                producing_stopped = True
                if finished >= enqueued:
                    caught_up.set()
                with trio.fail_after(60):
                    await caught_up.wait()
                queue.shutdown()

    counts = _counts(pg_dsn, name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        left_attempts = conn.execute(OLD_ATTEMPTS).fetchone()
    deleting = [b for b in batches if b[1]]
    longest = max(seconds for _, _, seconds, _ in batches)
    total = pruned_at - started
    print(
        f"\nretention: {OLD:,} finished jobs inserted in {filled:.2f} s; pruned in "
        f"{len(deleting)} DELETE statements of at most {max(n for _, n, _, _ in batches)} rows "
        f"({len(batches)} statements in all), {total:.2f} s from serve() to the last one\n"
        f"  longest statement (timed around the call): {longest * 1000:.1f} ms; "
        f"mean {sum(s for _, n, s, _ in deleting) / len(deleting) * 1000:.1f} ms per batch\n"
        f"  sampled from pg_stat_activity/pg_locks ({sampler.samples} samples): oldest running "
        f"DELETE {sampler.delete_age * 1000:.1f} ms, longest lock wait "
        f"{sampler.lock_wait * 1000:.1f} ms, oldest transaction "
        f"{sampler.transaction_age * 1000:.1f} ms\n"
        f"  workers meanwhile: {during} jobs finished while pruning, {finished} in all; "
        f"longest wait from enqueue to start {max(waits) * 1000:.1f} ms"
    )
    # Everything past its retention is gone, with its history; nothing else is.
    assert ("old", "completed") not in counts and ("old", "dead") not in counts
    assert ("old", "cancelled") not in counts
    assert counts[("young", "completed")] == YOUNG
    assert counts[("work", "completed")] == enqueued
    assert left_attempts is not None and left_attempts[0] == 0
    assert queue.metrics.pruned == {"completed": 80_000, "cancelled": 10_000, "dead": 10_000}
    # In batches: never more than PRUNE_BATCH rows per statement, and several passes.
    assert all(n <= PRUNE_BATCH for _, n, _, _ in batches)
    assert len(deleting) >= OLD // PRUNE_BATCH
    # No statement held its locks for LIMIT, nothing waited for a lock that long.
    assert longest < LIMIT
    assert sampler.samples > 10
    assert sampler.delete_age < LIMIT and sampler.lock_wait < LIMIT
    # The workers kept running jobs while the pruner worked, without long waits.
    assert during > 0
    assert max(waits) < LIMIT * 5


def test_the_retention_example(run_example: Any) -> None:
    """examples/retention.py, shown in docs/how-to/retention.md."""
    proc = run_example("retention.py")
    out: str = proc.stdout
    assert re.search(r"^the completed job was deleted \d+\.\d s after it finished$", out, re.M)
    assert "the dead job is kept: dead" in out
    assert re.search(r"^kyu_jobs_pruned_total\{status='completed'\} = 1(\.0)?$", out, re.M)
    assert "OK: finished jobs were pruned past their retention" in out
