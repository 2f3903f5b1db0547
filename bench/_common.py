"""Shared pieces of the benchmarks: servers, CPU accounting, worker processes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DSN = os.environ.get("KYU_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KYU_REDIS_URL", "redis://127.0.0.1:6379/0")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def new_queue_name(prefix: str) -> str:
    return f"kyu:bench-{prefix}-{uuid.uuid4().hex[:8]}"


def cpu_by_pid(names: tuple[str, ...]) -> dict[int, float]:
    """utime+stime, in seconds, of each process whose command name is in ``names``."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm.startswith(names):
            fields = stat[stat.rindex(")") + 2 :].split()
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


class ServerCpu:
    """CPU time a server's processes spend from `start` to the last `sample`, including
    processes that start or exit in between (a backend of a connection that closes):
    each is sampled while it lives, so an exit loses at most one sampling interval of it,
    where a difference of two sums would lose all of it (and could come out negative)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._start = cpu_by_pid(names)
        self._last = dict(self._start)

    def sample(self) -> None:
        self._last.update(cpu_by_pid(self._names))

    def seconds(self) -> float:
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items())


def process_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime: children included (threads are in utime/stime).
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def count_status(queue: str, status: str) -> int:
    with psycopg.connect(DSN) as conn:
        row = conn.execute(
            "SELECT count(*) FROM kyu_jobs WHERE queue = %s AND status = %s", (queue, status)
        ).fetchone()
    return int(row[0]) if row else 0


def vacuum() -> None:
    """VACUUM ANALYZE the jobs table, so every system measured starts from the same clean
    table (where autovacuum is off or behind, dead rows from earlier runs pile up)."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE kyu_jobs")


def run_workers(
    module: str,
    queue: str,
    processes: int,
    workers: int | str,
    total: int,
    extra: list[str] | None = None,
) -> dict[str, float]:
    """Start ``processes`` copies of ``python -m module QUEUE WORKERS``, wait until
    ``total`` jobs of ``queue`` are completed, stop them; return wall time and CPU figures."""
    vacuum()
    pg_cpu, redis_cpu = ServerCpu(("postgres",)), ServerCpu(("redis-server",))
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, queue, str(workers), *(extra or [])],
            cwd=ROOT,
            env={**os.environ, "KYU_DSN": DSN, "KYU_REDIS_URL": REDIS_URL},
        )
        for _ in range(processes)
    ]
    try:
        while count_status(queue, "completed") < total:
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"a worker process of {module} failed")
            pg_cpu.sample()
            redis_cpu.sample()
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        # Read every CPU figure while the workers (and their PostgreSQL backends) live:
        # an exited process's CPU time can no longer be read.
        worker_cpu = sum(process_cpu(p.pid) for p in procs)
        pg_cpu.sample()
        redis_cpu.sample()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    per_k = 1000 / total
    return {
        "seconds": elapsed,
        "jobs_per_s": total / elapsed,
        "worker_cpu_s_per_1k": worker_cpu * per_k,
        "postgres_cpu_s_per_1k": pg_cpu.seconds() * per_k,
        "redis_cpu_s_per_1k": redis_cpu.seconds() * per_k,
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_results(name: str, data: dict[str, Any], summary: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(summary + "\n")
    print(summary)
