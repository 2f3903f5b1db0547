"""What PostgreSQL runs per processed job, baseline against the current tree: a throwaway
PostgreSQL server of its own with ``pg_stat_statements`` (the shared one is never
reconfigured), a database per side, 20,000 no-op jobs enqueued by each side's own
library, burnt down by 2 processes x 50 workers of ``bench._kyu_worker``; the
statements' counts and execution times per job, side by side, in alternating rounds.

    .venv/bin/python -m bench.statements [--baseline a42cb3f] [--jobs 20000] [--rounds 2]

It answers "is a slowdown in PostgreSQL, and in which statement", which the CPU figures
of bench.limits cannot: the same statements with the same counts on both sides mean any
difference is in the workers, or noise. Needs the PostgreSQL server binaries (as
tests/faults) and the local Redis (KYU_REDIS_URL).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from kyu_trio._dev import find_postgres, mode_from_env
from kyu_trio._servers import PostgresServer

from ._common import REDIS_URL, machine, write_results
from ._compare import baseline_tree

ENQUEUE = """
import sys, trio
from kyu_trio import Config, EnqueueRequest, Queue
async def main():
    config = Config(dsn=sys.argv[1], queue_name=sys.argv[2], metrics_port=0)
    async with Queue(config) as queue:
        for _ in range(int(sys.argv[3]) // 1000):
            await queue.enqueue_many([EnqueueRequest("noop", "")] * 1000)
trio.run(main)
"""

TOP = """
SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 80)
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = %s ORDER BY total_exec_time DESC LIMIT 6
"""
TOTAL = """
SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0)
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s
"""


def run_side(pg: PostgresServer, side: str, tree: Path, jobs: int, rnd: int) -> dict[str, Any]:
    dsn = pg.dsn_for(side)
    env = {**os.environ, "PYTHONPATH": str(tree), "KYU_DSN": dsn, "KYU_REDIS_URL": REDIS_URL}
    queue = f"kyu:bench-statements-{side}-{rnd}"
    subprocess.run(
        [sys.executable, "-c", ENQUEUE, dsn, queue, str(jobs)], env=env, check=True, cwd=tree
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE kyu_jobs")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
    started = time.perf_counter()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "bench._kyu_worker", queue, "50"], env=env, cwd=tree
        )
        for _ in range(2)
    ]
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            done = "SELECT count(*) FROM kyu_jobs WHERE queue = %s AND status = 'completed'"
            while (row := conn.execute(done, (queue,)).fetchone()) and row[0] < jobs:
                if any(w.poll() not in (None, 0) for w in workers):
                    raise RuntimeError(f"a worker of the {side} side failed")
                time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=60)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        top = conn.execute(TOP, (side,)).fetchall()
        calls, exec_ms = conn.execute(TOTAL, (side,)).fetchone() or (0, 0)
    return {
        "side": side,
        "round": rnd,
        "jobs_per_s": jobs / elapsed,
        "statements_per_job": float(calls) / jobs,
        "exec_us_per_job": float(exec_ms) * 1000 / jobs,
        "top": [{"calls": c, "ms": float(ms), "rows": r, "query": q} for c, ms, r, q in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="a42cb3f")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pg_bin, _ = find_postgres(mode_from_env())
    settings = {
        "shared_preload_libraries": "'pg_stat_statements'",
        "pg_stat_statements.track": "'top'",
    }
    pg = PostgresServer(pg_bin, settings=settings)
    pg.start()
    runs: list[dict[str, Any]] = []
    root = Path(__file__).resolve().parents[1]
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            conn.execute("CREATE DATABASE baseline")
            conn.execute("CREATE DATABASE current")
        with baseline_tree(args.baseline, "statements") as base:
            for rnd in range(args.rounds):
                order = [("baseline", base), ("current", root)]
                for side, tree in order if rnd % 2 == 0 else order[::-1]:
                    runs.append(run_side(pg, side, tree, args.jobs, rnd))
                    print(f"round {rnd + 1}/{args.rounds} {side}: {runs[-1]['jobs_per_s']:,.0f}")
    finally:
        pg.close()
    lines = [
        f"# PostgreSQL statements per job: {args.baseline} against the current tree",
        "",
        f"Machine: {machine()}; a throwaway PostgreSQL with pg_stat_statements; "
        f"{args.jobs:,} no-op jobs, 2 processes x 50 workers.",
        "",
        "| side | round | jobs/s | statements / job | execution us / job |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['side']} | {r['round'] + 1} | {r['jobs_per_s']:,.0f} | "
            f"{r['statements_per_job']:.3f} | {r['exec_us_per_job']:.1f} |"
        )
    lines += ["", "The statements that took the most time, last round of each side:", ""]
    for side in ("baseline", "current"):
        last = [r for r in runs if r["side"] == side][-1]
        lines += [f"{side}:", "", "| calls | ms | rows | statement |", "|---:|---:|---:|---|"]
        lines += [
            f"| {t['calls']} | {t['ms']:.1f} | {t['rows']} | `{t['query']}` |" for t in last["top"]
        ]
        lines.append("")
    lines.append(
        "Reproduce: `.venv/bin/python -m bench.statements "
        f"--baseline {args.baseline} --jobs {args.jobs} --rounds {args.rounds}`"
    )
    write_results("statements", {"args": vars(args), "runs": runs}, "\n".join(lines))


if __name__ == "__main__":
    main()
