"""Machinery of the fault-injection suite: throwaway servers (those of `kyu-trio dev`,
with the watchdog), worker processes, and the invariant checker.

Everything here is synchronous on purpose: the tests watch *other* processes, so they
poll the database with ``time.sleep`` and never run inside a trio event loop (the only
async code, enqueueing through the public API, runs in its own ``trio.run``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import trio

from kyu_trio import Config, EnqueueRequest, Queue, _dev
from kyu_trio._servers import DevServerError, PostgresServer, make_tmpdir
from tests.conftest import ThrowawayRedis
from tests.faults.worker import EXEC_TABLE_DDL

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("completed", "dead", "cancelled")
ENQUEUE_BATCH = 5_000

#: Fast timings for every worker of the suite (overridable per worker).
FAST: dict[str, float] = {
    "heartbeat_interval": 0.2,
    "stale_job_timeout": 1.0,
    "reaper_interval": 0.3,
    "scheduler_interval": 0.2,
}


# ---- cleanup if we die ----------------------------------------------------------------


class Watchdog:
    """Feeds `tests.faults.watchdog` the resources to clean up should this process die
    without its teardown (e.g. killed by a CI timeout)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._keys = itertools.count()

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.watchdog"], cwd=ROOT, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def add(self, *action: object) -> str:
        key = f"r{next(self._keys)}"
        self._send(" ".join(["add", key, *map(str, action)]))
        return key

    def remove(self, key: str | None) -> None:
        if key is not None:
            self._send(f"remove {key}")


WATCHDOG = Watchdog()


# ---- PostgreSQL ---------------------------------------------------------------------


def find_pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl (``KYU_FAULTS_PG_BINDIR``, else those
    ``kyu-trio dev`` would run), or None."""
    if env := os.environ.get("KYU_FAULTS_PG_BINDIR"):
        return Path(env) if (Path(env) / "initdb").is_file() else None
    try:
        return _dev.find_postgres(_dev.mode_from_env())[0]
    except DevServerError:
        return None


class ThrowawayPostgres(PostgresServer):
    """The suite's PostgreSQL cluster (`kyu_trio._servers.PostgresServer`, as `kyu-trio
    dev` runs it), which the watchdog stops should this process die without its
    teardown."""

    def __init__(self, bindir: Path) -> None:
        super().__init__(bindir, directory=make_tmpdir("kyu-faults-pg-"))
        self._watch: str | None = None

    @property
    def tmpdir(self) -> Path:
        return self._dir

    @property
    def datadir(self) -> Path:
        return self.data_dir

    def start(self) -> None:
        if self._watch is None:
            self._watch = WATCHDOG.add("pg", self.pg_bin / "pg_ctl", self.datadir, self.tmpdir)
        super().start()
        self.wait_ready()

    def wait_ready(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def is_running(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back."""
        super().restart()
        self.wait_ready()

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def destroy(self) -> None:
        with contextlib.suppress(DevServerError):
            self.stop("immediate")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        WATCHDOG.remove(self._watch)
        self._watch = None


# ---- Redis --------------------------------------------------------------------------


class FaultRedis(ThrowawayRedis):
    """A throwaway Redis (no persistence) with the faults we inject; `stop` and `kill`
    both kill it (SIGKILL)."""

    _watch: str | None = None

    def start(self) -> None:
        super().start()
        assert self.pid is not None
        self._watch = WATCHDOG.add("kill", self.pid)

    def kill(self) -> None:
        super().kill()
        WATCHDOG.remove(self._watch)
        self._watch = None

    def flushall(self) -> None:
        client = self.client()
        client.flushall()
        client.close()

    def restart_empty(self) -> None:
        """Kill it and start an empty one on the same port (no persistence)."""
        self.stop()
        self.start()

    def zcard(self, key: str) -> int:
        client = self.client()
        try:
            return int(client.zcard(key))
        finally:
            client.close()


# ---- worker processes ---------------------------------------------------------------


class Worker:
    """One ``python -m tests.faults.worker`` process; output goes to files (a full pipe
    would block the worker)."""

    def __init__(self, argv: list[str], logdir: Path, name: str) -> None:
        self.name = name
        self.out_path = logdir / f"{name}.out"
        self.err_path = logdir / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.worker", *argv],
                cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self.worker_id: str | None = None
        self._watch: str | None = WATCHDOG.add("kill", self.proc.pid)

    def _reaped(self) -> None:
        WATCHDOG.remove(self._watch)
        self._watch = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def lock_pattern(self) -> str:
        """A LIKE pattern matching ``locked_by`` of this process's claims."""
        return f"%:{self.pid}:%"

    def alive(self) -> bool:
        if self.proc.poll() is None:
            return True
        self._reaped()
        return False

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def errors(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_ready(self, limit: float = 30.0) -> str:
        deadline = time.monotonic() + limit
        while True:
            for line in self.output().splitlines():
                if line.startswith("ready "):
                    self.worker_id = line.split(" ", 1)[1].strip()
                    return self.worker_id
            if not self.alive():
                raise AssertionError(f"worker {self.name} died before serving:\n{self.errors()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready after {limit}s")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reaped()

    def terminate(self, limit: float = 60.0) -> float:
        """SIGTERM once it is serving; wait for a clean exit; return how long it took."""
        self.wait_ready()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(limit)
        took = time.monotonic() - started
        self._reaped()
        assert code == 0, f"worker {self.name} exited {code}:\n{self.errors()[-3000:]}"
        assert "serve returned" in self.output(), self.errors()[-3000:]
        return took


# ---- the invariant --------------------------------------------------------------------


@dataclass
class Report:
    scenario: str
    enqueued: int
    completed: int
    dead: int
    lost: int
    duplicates: int
    #: job id -> executions recorded in kyu_fault_exec
    executions: dict[str, int] = field(default_factory=dict)
    #: job id -> its row as a dict (status, attempt, retry_count, error_message, ...)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def duplicated_ids(self) -> set[str]:
        return {job_id for job_id, n in self.executions.items() if n > 1}

    def line(self) -> str:
        extra = f" dead={self.dead}" if self.dead else ""
        return (
            f"scenario={self.scenario} enqueued={self.enqueued} completed={self.completed} "
            f"duplicates={self.duplicates} lost={self.lost}{extra} elapsed={self.elapsed:.1f}s"
        )


class FaultEnv:
    """One scenario's world: the suite's PostgreSQL, its own Redis, its own queue name,
    the worker processes it started (all killed at teardown)."""

    def __init__(self, pg: ThrowawayPostgres, rds: FaultRedis, queue: str, logdir: Path) -> None:
        self.pg = pg
        self.redis = rds
        self.queue = queue
        self.logdir = logdir
        self.workers: list[Worker] = []
        self.started = time.monotonic()

    # -- database helpers --

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.dsn, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def status_counts(self) -> dict[str, int]:
        rows = self.sql(
            "SELECT status, count(*) FROM kyu_jobs WHERE queue = %s GROUP BY status", (self.queue,)
        )
        return {status: int(n) for status, n in rows}

    def running_of(self, worker: Worker) -> set[str]:
        rows = self.sql(
            "SELECT id::text FROM kyu_jobs WHERE queue = %s AND status = 'running' "
            "AND locked_by LIKE %s",
            (self.queue, worker.lock_pattern),
        )
        return {r[0] for r in rows}

    def executions_of(self, job_id: str) -> list[tuple[int, int]]:
        """(attempt, pid) of each recorded execution of one job."""
        rows = self.sql(
            "SELECT attempt, pid FROM kyu_fault_exec WHERE job_id = %s ORDER BY at", (job_id,)
        )
        return [(int(a), int(p)) for a, p in rows]

    def job(self, job_id: str) -> dict[str, Any]:
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            row = cur.execute("SELECT * FROM kyu_jobs WHERE id = %s", (job_id,)).fetchone()
        assert row is not None, f"no row for job {job_id}"
        return dict(row)

    # -- producing --

    def config(self, **overrides: Any) -> Config:
        values: dict[str, Any] = {
            "dsn": self.pg.dsn,
            "redis_url": self.redis.url,
            "queue_name": self.queue,
            "metrics_port": 0,
        }
        values.update(overrides)
        return Config(**values)

    def enqueue(self, requests: Iterable[EnqueueRequest | tuple[str, str]]) -> list[str]:
        """Enqueue through the public API (in batches of 5,000); return the ids."""
        items = list(requests)

        async def go() -> list[str]:
            queue = Queue(self.config())
            ids: list[str] = []
            async with queue:
                for start in range(0, len(items), ENQUEUE_BATCH):
                    ids += await queue.enqueue_many(items[start : start + ENQUEUE_BATCH])
            return ids

        return trio.run(go)

    # -- workers --

    def start_worker(self, *, ready: bool = True, **options: Any) -> Worker:
        values: dict[str, Any] = {"workers": 4, "shutdown_grace": 5.0, **FAST, **options}
        argv = ["--dsn", self.pg.dsn, "--redis-url", self.redis.url, "--queue", self.queue]
        for name, value in values.items():
            argv += ["--" + name.replace("_", "-"), str(value)]
        worker = Worker(argv, self.logdir, f"w{len(self.workers)}")
        self.workers.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    def stop_all(self) -> None:
        """SIGTERM every live worker and check each stops cleanly."""
        for worker in self.workers:
            if worker.alive():
                worker.terminate()

    def kill_all(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.kill()

    def worker_logs(self, limit: int = 4000) -> str:
        return "\n".join(
            f"--- {w.name} (pid {w.pid}) stderr ---\n{w.errors()[-limit:]}" for w in self.workers
        )

    # -- waiting and checking --

    def wait_until(
        self,
        predicate: Callable[[], bool],
        limit: float,
        what: str,
        on_poll: Callable[[], None] | None = None,
        interval: float = 0.1,
    ) -> None:
        deadline = time.monotonic() + limit
        while True:
            if on_poll is not None:
                on_poll()
            if predicate():
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {limit}s waiting for {what}; statuses "
                    f"{self.status_counts()}\n{self.worker_logs()}"
                )
            time.sleep(interval)

    def wait_quiescent(
        self, ids: Sequence[str], limit: float = 120.0, on_poll: Callable[[], None] | None = None
    ) -> None:
        """Until every row of the queue is final and every enqueued id has a row."""
        wanted = len(ids)

        def quiet() -> bool:
            counts = self.status_counts()
            final = sum(counts.get(s, 0) for s in FINAL)
            return final == sum(counts.values()) and final >= wanted

        self.wait_until(quiet, limit, "quiescence", on_poll=on_poll, interval=0.2)

    def check(
        self,
        scenario: str,
        ids: Sequence[str],
        *,
        expect_dead: Iterable[str] = (),
        limit: float = 120.0,
        on_poll: Callable[[], None] | None = None,
        record_jobs: Iterable[str] | None = None,
    ) -> Report:
        """Wait for quiescence, then assert the invariant and print the report line.

        Every id not in ``expect_dead`` is ``completed`` exactly once; those in it are
        ``dead``; nothing of the queue is left running/pending/scheduled/failed; each
        ``record`` job (all of ``ids`` not expected dead, unless ``record_jobs`` says
        otherwise) ran at least once, never twice under the same claim (attempt), and the
        run that completed it was recorded. Returns the report so the test can bound the
        duplicates by what its fault made unavoidable.
        """
        self.wait_quiescent(ids, limit, on_poll)
        dead_ids = set(expect_dead)
        recorded = set(ids) - dead_ids if record_jobs is None else set(record_jobs)
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            rows = {
                str(r["id"]): dict(r)
                for r in cur.execute(
                    "SELECT id, status, attempt, retry_count, error_message, locked_by, "
                    "completed_at FROM kyu_jobs WHERE queue = %s",
                    (self.queue,),
                ).fetchall()
            }
            execs: dict[str, list[int]] = {}
            for job_id, attempt in conn.execute(
                "SELECT e.job_id::text, e.attempt FROM kyu_fault_exec e "
                "JOIN kyu_jobs j ON j.id = e.job_id WHERE j.queue = %s",
                (self.queue,),
            ).fetchall():
                execs.setdefault(job_id, []).append(int(attempt))
        completed = [i for i in ids if rows.get(i, {}).get("status") == "completed"]
        dead = [i for i in ids if rows.get(i, {}).get("status") == "dead"]
        lost = [
            i
            for i in ids
            if rows.get(i, {}).get("status") != ("dead" if i in dead_ids else "completed")
        ]
        counts = {i: len(execs.get(i, [])) for i in recorded}
        report = Report(
            scenario=scenario,
            enqueued=len(ids),
            completed=len(completed),
            dead=len(dead),
            lost=len(lost),
            duplicates=sum(max(0, n - 1) for n in counts.values()),
            executions=counts,
            rows=rows,
            elapsed=time.monotonic() - self.started,
        )
        print(f"\n{report.line()}", flush=True)
        assert not lost, f"{len(lost)} jobs not in their final state: " + ", ".join(
            f"{i}={rows.get(i, {}).get('status')}" for i in lost[:10]
        )
        assert set(rows) == set(ids), "the queue holds rows nobody enqueued"
        never_ran = [i for i, n in counts.items() if n == 0]
        assert not never_ran, f"{len(never_ran)} completed jobs have no recorded execution"
        for job_id in recorded:
            attempts = execs[job_id]
            row = rows[job_id]
            # A claim token is handed out once: one execution per attempt at most.
            assert len(attempts) == len(set(attempts)), (job_id, attempts)
            assert max(attempts) <= row["attempt"], (job_id, attempts, row)
            if row["status"] == "completed":
                # The run that completed the row is one that ran (and was recorded).
                assert row["attempt"] in attempts, (job_id, attempts, row)
        return report


def record_jobs(
    n: int, seconds: float | str = 0, *, job_timeout: float = 5.0, max_retries: int = 10
) -> list[EnqueueRequest]:
    return [
        EnqueueRequest("record", str(seconds), job_timeout=job_timeout, max_retries=max_retries)
        for _ in range(n)
    ]


def scale() -> float:
    """``KYU_FAULTS_SCALE`` (default 1): multiplies the job counts of the big scenarios."""
    raw = os.environ.get("KYU_FAULTS_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"KYU_FAULTS_SCALE={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError("KYU_FAULTS_SCALE must be > 0")
    return value


__all__ = [
    "EXEC_TABLE_DDL",
    "FAST",
    "FaultEnv",
    "FaultRedis",
    "Report",
    "ThrowawayPostgres",
    "Worker",
    "find_pg_bindir",
    "record_jobs",
    "scale",
]
