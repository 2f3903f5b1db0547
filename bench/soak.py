"""Soak run (not in CI): many no-op jobs through worker subprocesses, watching memory.

    .venv/bin/python -m bench.soak                  # 500,000 jobs, 2 worker processes
    .venv/bin/python -m bench.soak --jobs 20000     # a quick check

Uses the local servers (or KYU_DSN / KYU_REDIS_URL) and a queue name of its own. Jobs are
enqueued with ``enqueue_many`` in batches of 5,000 while the workers run, keeping at most
``--backlog`` jobs waiting. Reports each worker's RSS (VmRSS from /proc/<pid>/status)
when it is ready, at its peak and at the end, and checks the invariant: every job
``completed``, none ``running`` or in any other state. Exits 1 when the invariant fails
or a worker's RSS grew by more than ``--max-growth-mb`` (30 MB) from start to end.
The queue's rows and Redis keys are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import redis
import trio

from kyu_trio import Config, EnqueueRequest, Queue

ROOT = Path(__file__).resolve().parents[1]
DSN = os.environ.get("KYU_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KYU_REDIS_URL", "redis://127.0.0.1:6379/0")
BATCH = 5_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class WorkerStats:
    pid: int
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MB)

    @property
    def growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb

    def sample(self, t: float) -> None:
        mb = rss_mb(self.pid)
        self.rss_peak_mb = max(self.rss_peak_mb, mb)
        self.samples.append((round(t, 1), round(mb, 1)))


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.queue = f"kyu:soak-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen[str]] = []
        self.stats: list[WorkerStats] = []
        self.started = time.monotonic()

    def sql(self, query: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with psycopg.connect(DSN, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def status_counts(self) -> dict[str, int]:
        rows = self.sql(
            "SELECT status, count(*) FROM kyu_jobs WHERE queue = %s GROUP BY status", (self.queue,)
        )
        return {str(s): int(n) for s, n in rows}  # type: ignore[call-overload]

    def start_workers(self) -> None:
        env = {**os.environ, "KYU_DSN": DSN, "KYU_REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1"}
        for _ in range(self.args.processes):
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench._soak_worker", self.queue, str(self.args.workers)],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=None, text=True,
            )  # fmt: skip
            self.procs.append(proc)
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"worker {proc.pid} did not start: {line!r}")
            stats = WorkerStats(proc.pid)
            stats.rss_start_mb = stats.rss_peak_mb = rss_mb(proc.pid)
            self.stats.append(stats)

    def sample(self) -> None:
        t = time.monotonic() - self.started
        for stats, proc in zip(self.stats, self.procs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}")
            stats.sample(t)

    async def produce_and_wait(self) -> dict[str, int]:
        """Enqueue every job (at most --backlog waiting), sampling RSS; return the final
        status counts once every job is in a final state."""
        total, backlog = self.args.jobs, self.args.backlog
        queue = Queue(Config(dsn=DSN, redis_url=REDIS_URL, queue_name=self.queue, metrics_port=0))
        enqueued, last_report = 0, 0.0
        batch = [EnqueueRequest("noop", "")] * BATCH
        async with queue:
            while True:
                counts = await trio.to_thread.run_sync(self.status_counts)
                done = sum(counts.get(s, 0) for s in ("completed", "dead", "cancelled"))
                await trio.to_thread.run_sync(self.sample)
                now = time.monotonic() - self.started
                if now - last_report >= 10:
                    last_report = now
                    rss = " ".join(f"{s.samples[-1][1]:.0f}MB" for s in self.stats)
                    print(f"  {now:6.0f}s enqueued={enqueued} done={done} rss={rss}", flush=True)
                if done >= total:
                    return counts
                while enqueued < total and enqueued - done < backlog:
                    n = min(BATCH, total - enqueued)
                    await queue.enqueue_many(batch[:n])
                    enqueued += n
                if now > self.args.timeout:
                    raise RuntimeError(f"timed out after {now:.0f}s: {counts}")
                await trio.sleep(1.0)

    def stop_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self) -> None:
        if self.args.keep:
            print(f"kept queue {self.queue!r}")
            return
        self.sql("DELETE FROM kyu_jobs WHERE queue = %s", (self.queue,))
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(self.queue, f"{self.queue}:~epoch")
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=20, help="workers per process")
    parser.add_argument("--backlog", type=int, default=50_000, help="most jobs left waiting")
    parser.add_argument("--max-growth-mb", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the queue's rows")
    args = parser.parse_args()

    soak = Soak(args)
    print(
        f"soak: {args.jobs} no-op jobs, {args.processes} processes x {args.workers} workers, "
        f"queue {soak.queue!r}",
        flush=True,
    )
    counts: dict[str, int] = {}
    try:
        soak.start_workers()
        counts = trio.run(soak.produce_and_wait)
        for stats in soak.stats:
            stats.rss_end_mb = rss_mb(stats.pid)
    finally:
        soak.stop_workers()
        elapsed = time.monotonic() - soak.started
        if counts:
            soak.cleanup()

    invariant = counts == {"completed": args.jobs}
    grown = [s for s in soak.stats if s.growth_mb > args.max_growth_mb]
    for stats in soak.stats:
        print(
            f"worker pid={stats.pid} rss_start={stats.rss_start_mb:.1f}MB "
            f"rss_peak={stats.rss_peak_mb:.1f}MB rss_end={stats.rss_end_mb:.1f}MB "
            f"growth={stats.growth_mb:+.1f}MB"
        )
    print(
        f"invariant: completed={counts.get('completed', 0)}/{args.jobs} "
        f"running={counts.get('running', 0)} other="
        f"{ {k: v for k, v in counts.items() if k != 'completed'} } -> "
        f"{'OK' if invariant else 'FAILED'}"
    )
    print(f"elapsed {elapsed:.0f}s, {args.jobs / elapsed:,.0f} jobs/s")
    if args.json:
        figures = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "elapsed_s": elapsed,
            "counts": counts,
            "invariant_ok": invariant,
            "workers": [asdict(s) | {"growth_mb": s.growth_mb} for s in soak.stats],
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not invariant or grown:
        sys.exit(1)


if __name__ == "__main__":
    main()
