"""The dashboard reading from a real streaming replica (issue 15, point 4): a throwaway
primary and a standby made from it with ``pg_basebackup -R``, both on free ports of
their own (the shared servers are never touched). Without ``primary_dsn`` the dashboard
says it reads a replica and acts on nothing; with it, its actions go to the primary and
show on the replica once replayed."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio

from kyu_trio import Config, JobStatus, Queue
from kyu_trio._servers import PostgresServer, make_tmpdir
from kyu_trio.dashboard import DashboardConfig, create_app
from tests.faults.harness import find_pg_bindir
from tests.web.conftest import Web, make_dead

pytestmark = pytest.mark.integration

DB = "kyu_replica"


def _replica_of(primary: PostgresServer) -> PostgresServer:
    """A hot standby of ``primary``, streaming from it, on a port of its own."""
    bindir = primary.pg_bin
    replica = PostgresServer(bindir, directory=make_tmpdir("kyu-replica-"))
    assert replica.directory is not None
    replica.pg_user = primary.pg_user  # PostgreSQL refuses to run as root
    log = replica.directory / "postgres.log"
    log.touch()
    if replica.pg_user is not None:
        user = pwd.getpwnam(replica.pg_user)
        for path in (replica.directory, log):
            os.chown(path, user.pw_uid, user.pw_gid)
    backup = subprocess.run(
        replica.as_server_user(
            [
                str(bindir / "pg_basebackup"),
                *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
                *("-D", str(replica.data_dir), "-R", "-X", "stream", "--no-sync"),
                # An immediate checkpoint: a spread one waits for most of
                # checkpoint_timeout.
                "--checkpoint=fast",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if backup.returncode != 0:
        shutil.rmtree(replica.directory, ignore_errors=True)
        raise RuntimeError(f"pg_basebackup failed: {backup.stderr.strip()}")
    # The copied configuration names the primary's port and socket directory: the last
    # setting of a name wins.
    with open(replica.data_dir / "postgresql.conf", "a") as conf:
        conf.write(f"port = {replica.port}\nunix_socket_directories = '{replica.directory}'\n")
    replica.start()
    return replica


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    bindir = find_pg_bindir()
    if bindir is None or not (bindir / "pg_basebackup").is_file():
        pytest.skip("needs the PostgreSQL server binaries, pg_basebackup among them")
    primary = PostgresServer(bindir)
    primary.start()
    replica: PostgresServer | None = None
    try:
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        replica = _replica_of(primary)
        yield primary, replica
    finally:
        if replica is not None:
            directory = replica.directory
            replica.stop()
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        primary.close()


def _status_on(dsn: str, job_id: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT status FROM kyu_jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else str(row[0])


async def _replayed(dsn: str, job_id: str, status: str) -> None:
    """Wait until the replica shows the job in ``status``."""
    with trio.fail_after(20):
        # Polling: replay on another server notifies nothing here.
        while True:
            if await trio.to_thread.run_sync(_status_on, dsn, job_id) == status:
                return
            await trio.sleep(0.05)


async def test_on_a_replica_it_reads_and_acts_only_through_the_primary(
    primary_and_replica: tuple[PostgresServer, PostgresServer], redis_url: str, queue_name: str
) -> None:
    primary, replica = primary_and_replica
    primary_dsn, replica_dsn = primary.dsn_for(DB), replica.dsn_for(DB)
    queue = Queue(
        Config(dsn=primary_dsn, redis_url=redis_url, queue_name=queue_name, metrics_port=0)
    )

    @queue.handler("boom")
    async def boom(payload: Any) -> None:
        raise ValueError(payload)

    async with queue:
        [dead] = await make_dead(queue, 1)
        await _replayed(replica_dsn, dead, "dead")
        assert await trio.to_thread.run_sync(_in_recovery, replica_dsn)

        settings: dict[str, Any] = {
            "dsn": replica_dsn,
            "redis_url": redis_url,
            "queues": [queue_name],
            "refresh_interval": 0,
            "csrf_secret": b"r" * 32,
        }
        # No primary: the dashboard reads the replica, says so, and acts on nothing.
        alone = Web(create_app(DashboardConfig(**settings)))
        with_primary = Web(create_app(DashboardConfig(**settings, primary_dsn=primary_dsn)))
        try:
            page = await alone.get(f"/jobs/{dead}")
            assert page.status_code == 200
            assert "is a replica (in recovery)" in page.text
            assert 'method="post"' not in page.text
            assert "broken" in page.text  # the job's error, read from the replica

            # With the primary: the same page offers Retry, and the retry lands on the
            # primary (the replica cannot write), then shows on the replica.
            page = await with_primary.get(f"/jobs/{dead}")
            assert "Reading from a replica" in page.text
            assert f'action="/jobs/{dead}/retry"' in page.text
            alone.client.cookies = with_primary.client.cookies
            alone.token = with_primary.token
            refused = await alone.post(f"/jobs/{dead}/retry", {})
            assert refused.status_code == 403
            assert (await queue.inspect(dead)).status is JobStatus.DEAD

            answer = await with_primary.post(f"/jobs/{dead}/retry", {})
            assert answer.status_code == 303, answer.text
            assert (await queue.inspect(dead)).status is JobStatus.PENDING
            await _replayed(replica_dsn, dead, "pending")
            page = await with_primary.get(f"/jobs/{dead}")
            assert 'data-status="pending"' in page.text or ">pending<" in page.text
        finally:
            for web in (alone, with_primary):
                await web.aclose()
                await web.app.state.kyu_dashboard.aclose()


def _in_recovery(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def test_the_replica_fixture_is_a_standby(
    primary_and_replica: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, replica = primary_and_replica
    assert _in_recovery(replica.dsn) and not _in_recovery(primary.dsn)
    deadline = time.monotonic() + 20
    with psycopg.connect(primary.dsn_for(DB), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS replica_probe (x int)")
    while time.monotonic() < deadline:
        with psycopg.connect(replica.dsn_for(DB), autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass('replica_probe')").fetchone()
        if found and found[0]:
            return
        time.sleep(0.05)
    raise AssertionError("the replica never replayed the primary's table")
