"""One maintenance leader per queue across real worker processes (issue 13, point 7).

PostgreSQL counts the statements itself (pg_stat_statements, on a throwaway server of
this test's own): with 1 and with 8 idle worker processes, the maintenance queries per
interval are the same; only the lease requests (one primary-key upsert per process per
interval) grow. Then the leader is SIGKILLed and another process must hold the lease
within two leader intervals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from kyu_trio._servers import PostgresServer, make_tmpdir

from .harness import WATCHDOG, find_pg_bindir

pytestmark = pytest.mark.integration

LEADER_INTERVAL = 1.0
WINDOW = 6.0

WORKER = f"""
import sys, trio
from kyu_trio import Config, Queue
dsn, redis_url, queue_name = sys.argv[1:4]
queue = Queue(Config(
    dsn=dsn, redis_url=redis_url, queue_name=queue_name, workers=2, pool_size=2,
    metrics_port=0, shutdown_grace=1, leader_interval={LEADER_INTERVAL}, scheduler_interval=0.5,
    reaper_interval=1.0, metrics_sample_interval=1.0,
))
queue.register("t", lambda payload: None)

async def main():
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        print("ready", queue.worker_id, flush=True)

trio.run(main)
"""


class StatsPostgres(PostgresServer):
    """A throwaway server that loads pg_stat_statements (a reconfigured server: never the
    shared one)."""

    def __init__(self, bindir: Path) -> None:
        super().__init__(
            bindir,
            directory=make_tmpdir("kyu-leader-pg-"),
            settings={"shared_preload_libraries": "'pg_stat_statements'"},
        )
        self.watch = WATCHDOG.add("pg", bindir / "pg_ctl", self.data_dir, self._dir)


@pytest.fixture(scope="module")
def stats_pg() -> Iterator[StatsPostgres]:
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip("needs the PostgreSQL server binaries (initdb, pg_ctl)")
    server = StatsPostgres(bindir)
    try:
        server.start()
        try:
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_stat_statements")
        except psycopg.Error as exc:
            pytest.skip(f"pg_stat_statements is not available here: {exc}")
        yield server
    finally:
        server.close()
        WATCHDOG.remove(server.watch)


def start_workers(dsn: str, redis_url: str, queue: str, n: int) -> dict[str, subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, dsn, redis_url, queue],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    by_id = {}
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], f"worker did not start (exit {proc.poll()})"
        by_id[line[1]] = proc
    return by_id


def stop_workers(procs: dict[str, subprocess.Popen[str]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def calls(conn: psycopg.Connection[tuple[object, ...]], db: str) -> tuple[int, int]:
    """(maintenance statements, lease statements) run in ``db`` since the last reset."""
    rows = conn.execute(
        "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = %s",
        (db,),
    ).fetchall()
    maintenance = sum(int(n) for q, n in rows if "kyu_jobs" in str(q))
    lease = sum(int(n) for q, n in rows if "kyu_leaders" in str(q))
    return maintenance, lease


def test_maintenance_does_not_grow_with_processes_and_the_leader_fails_over(
    stats_pg: StatsPostgres, redis_url: str
) -> None:
    counted: dict[int, tuple[int, int]] = {}
    with psycopg.connect(stats_pg.dsn, autocommit=True) as admin:
        for n in (1, 8):
            db = f"leader_{n}_{uuid.uuid4().hex[:8]}"
            admin.execute(f"CREATE DATABASE {db}")
            queue = f"kyu:leader-{uuid.uuid4().hex[:8]}"
            procs = start_workers(stats_pg.dsn_for(db), redis_url, queue, n)
            try:
                time.sleep(2 * LEADER_INTERVAL)  # start-up passes (catch-up) are done
                admin.execute("SELECT pg_stat_statements_reset()")
                time.sleep(WINDOW)
                counted[n] = calls(admin, db)
                if n == 8:
                    handover = kill_the_leader(stats_pg.dsn_for(db), queue, procs)
            finally:
                stop_workers(procs)
                client = redis.Redis.from_url(redis_url)
                client.delete(queue, f"{queue}:~epoch")
                client.close()
    (m1, l1), (m8, l8) = counted[1], counted[8]
    print(
        f"\nover {WINDOW:.0f} s: maintenance statements 1 process {m1}, 8 processes {m8}; "
        f"lease statements {l1} vs {l8}; leader SIGKILLed -> new leader after {handover:.2f} s "
        f"(leader_interval {LEADER_INTERVAL} s)"
    )
    assert m1 >= 20  # the passes ran: ~2 promotions, a rescue and a sweep, a sample per s
    # The same work, whatever the number of processes (a pass more or less at the ends).
    assert m8 <= m1 * 1.2 + 5
    # The lease requests are one per process per interval (more from the renewing leader).
    assert l8 > l1
    assert handover <= 2 * LEADER_INTERVAL


def kill_the_leader(dsn: str, queue: str, procs: dict[str, subprocess.Popen[str]]) -> float:
    """SIGKILL the process holding the lease; seconds until another holds a live lease."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        holder, term = conn.execute(
            "SELECT holder, term FROM kyu_leaders WHERE queue = %s", (queue,)
        ).fetchone() or (None, None)
        assert holder in procs
        procs[holder].kill()
        killed = time.monotonic()
        while time.monotonic() - killed < 10:
            row = conn.execute(
                "SELECT holder, term FROM kyu_leaders WHERE queue = %s AND expires_at > now()",
                (queue,),
            ).fetchone()
            if row is not None and row[0] != holder:
                assert row[1] == term + 1
                return time.monotonic() - killed
            time.sleep(0.02)
    raise AssertionError("no process took the lease over within 10 s")
