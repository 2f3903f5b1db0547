"""Limits per job type (issue 14, point 7): no regression for job types without limits,
and what a limit costs per claimed job.

    .venv/bin/python -m bench.limits --rounds 7 --jobs full

In one run, with rounds interleaved so that drift of the machine hits both sides alike
(see `bench._compare`: baseline worktree, scratch databases, alternating order, median
ratios with an interval, verdict):

(a) processed jobs/s of a job type without limits (``bench.throughput``'s no-op job and
    worker settings: 2 processes x 50 workers, Config defaults otherwise), the baseline,
    commit a42cb3f (the last commit before pausing and limits), against the current
    working tree. Two figures, both gated: jobs over the wall time from starting the
    worker processes to the last completion (as ``bench.throughput`` measures it), and
    jobs over the time from the first claim to the last completion (the jobs' own
    ``locked_at`` / ``completed_at``), which leaves the processes' start-up out and so
    does not dilute a difference in the claim path.
(b) on the current tree only, the same no-op job registered with a limit it never
    reaches, ``concurrency=100000``, and with a rate limit it never reaches,
    ``rate_limit=(1000000, 1.0)``, against the same job without limits (the run of (a)),
    the three in a rotating order from round to round. From them, the cost of a limited
    type per claimed job: wall time (first claim to last completion, divided by the
    jobs: the fleet's time per job, not one claim's latency), and worker, PostgreSQL and
    Redis CPU time per job (read from /proc; 10 ms ticks).
(c) on the current tree only, unless ``--at-limit-jobs 0``: types that are at their limit,
    ``concurrency=10`` with jobs of 0.1 s (at most 100 jobs/s) and ``rate_limit=(100,
    1.0)`` with no-op jobs (100 starts/s), served by the same 2 x 50 workers: their steady
    starts/s (the starts after the first burst the limit allows, over the time from the
    first start to the last: (n - limit) / (last - first), from the recorded claim times
    ``locked_at``); the most handlers running at once (their wall-clock entry to exit,
    which lies inside the time the job is ``running``, so above the limit would prove the
    limit broken); and the most starts in any window of the rate limit, by recorded claim
    time (the claiming worker's ``now``, read before its claim ran) and by handler entry
    (which the dispatch delay can bunch up).

A run of workers that completes no job for ``--stall`` seconds (120) fails the run with
the queue's state rather than waiting forever.

The baseline has no ``concurrency=``: its child runs (a) only. Verdict, for the two
figures of (a): **regression** when the whole interval for the median current /
baseline ratio, of 90 % coverage (5 rounds or more), lies below 0.95, exit status 1;
**inconclusive** when only the median does; **ok** otherwise. Servers: KYU_DSN (its
database is used only to create and drop the scratch ones) and KYU_REDIS_URL, default
127.0.0.1.
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis
import trio

from kyu_trio import Config, EnqueueRequest, Queue

from ._common import (
    DSN,
    REDIS_URL,
    count_status,
    machine,
    new_queue_name,
    run_workers,
    vacuum,
    write_results,
)
from ._compare import (
    SYSTEMS,
    check_library,
    describe_current,
    fmt_stats,
    gated_row,
    median_interval,
    ratios,
    run_rounds,
    schema_version,
    verdict_text,
)
from .throughput import cleanup

BASELINE = "a42cb3f"
# --jobs presets: (jobs per run of (a) and (b), jobs per run of (c)).
SIZES = {"small": (2_000, 400), "full": (20_000, 1_000)}
# (b): limits that are never reached.
UNREACHED_CONCURRENCY = 100_000
UNREACHED_RATE = (1_000_000, 1.0)
# (c): limits that are reached: 10 jobs of 0.1 s at once, and 100 starts per second.
AT_CONCURRENCY, AT_SLEEP = 10, 0.1
AT_RATE = (100, 1.0)
# Worker module and its extra arguments, per kind of run.
KINDS: dict[str, tuple[str, list[str]]] = {
    "unlimited": ("bench._kyu_worker", []),
    "concurrency": ("bench._limits_worker", ["--concurrency", str(UNREACHED_CONCURRENCY)]),
    "rate": ("bench._limits_worker", ["--rate", *map(str, UNREACHED_RATE)]),
    "at_concurrency": (
        "bench._limits_worker",
        ["--concurrency", str(AT_CONCURRENCY), "--sleep", str(AT_SLEEP)],
    ),
    "at_rate": ("bench._limits_worker", ["--rate", *map(str, AT_RATE)]),
}
LIMITED = {
    "concurrency": f"concurrency={UNREACHED_CONCURRENCY}",
    "rate": f"rate_limit=({UNREACHED_RATE[0]}, {UNREACHED_RATE[1]})",
}
UNLIMITED_ORDER = ["unlimited", "concurrency", "rate"]


# ---- one round of one side (runs in a subprocess, with that side's kyu_trio) ----------


async def enqueue_noops(queue_name: str, jobs: int) -> None:
    """``jobs`` no-op jobs, in ``enqueue_many`` batches of up to 1,000."""
    queue = Queue(Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name, metrics_port=0))
    async with queue:
        left = jobs
        while left:
            n = min(1000, left)
            await queue.enqueue_many([EnqueueRequest("noop", "")] * n)
            left -= n


def job_times(queue: str) -> list[tuple[float, float]]:
    """(locked_at, completed_at) of the queue's completed jobs, in seconds since the
    epoch: each job was claimed once. Both are the ``now`` of the worker that wrote them,
    taken before its statement ran."""
    with psycopg.connect(DSN) as conn:
        rows = conn.execute(
            "SELECT locked_at, completed_at FROM kyu_jobs WHERE queue = %s AND status = "
            "'completed'",
            (queue,),
        ).fetchall()
    return [(a.timestamp(), b.timestamp()) for a, b in rows]


def handler_times(directory: Path) -> list[tuple[float, float]]:
    """The (entry, exit) wall-clock times of every handler run `bench._limits_worker`
    processes wrote to ``directory``."""
    return [(a, b) for path in directory.glob("*.json") for a, b in json.loads(path.read_text())]


def busy_rate(times: Sequence[tuple[float, float]]) -> float:
    """Jobs per second from the first claim to the last completion."""
    return len(times) / (max(b for _, b in times) - min(a for a, _ in times))


def max_running(times: Sequence[tuple[float, float]]) -> int:
    """The most (start, end) intervals open at one instant."""
    # At equal times an end (-1) sorts before a start (+1): a slot freed, then reused.
    events = sorted([(a, 1) for a, _ in times] + [(b, -1) for _, b in times])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def max_in_window(starts: Sequence[float], per: float) -> int:
    """The most of ``starts`` in any window [t, t + per)."""
    s = sorted(starts)
    most = lo = 0
    for hi, t in enumerate(s):
        while t - s[lo] >= per:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def steady_rate(starts: Sequence[float], allowance: int) -> float:
    """Starts per second after the first ``allowance`` (the burst a limit lets through at
    once): (n - allowance) / (last start - first start)."""
    s = sorted(starts)
    return (len(s) - allowance) / (s[-1] - s[0])


def forget_queue(queue: str) -> None:
    """The queue's jobs, Redis keys (parked sets included) and limit/pause rows."""
    cleanup(queue)
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{queue}*"):
        client.delete(key)
    with psycopg.connect(DSN, autocommit=True) as conn:
        for table in ("kyu_limits", "kyu_queues"):
            row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if row and row[0]:
                conn.execute(f"DELETE FROM {table} WHERE queue = %s", (queue,))


def queue_state(queue: str) -> str:
    """The queue's jobs by status and its Redis keys with their sizes: for a stall."""
    with psycopg.connect(DSN) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM kyu_jobs WHERE queue = %s GROUP BY 1", (queue,)
        ).fetchall()
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = []
    for key in client.scan_iter(match=f"{queue}*"):
        kind = str(client.type(key))
        size = {"zset": client.zcard, "set": client.scard, "list": client.llen}.get(kind)
        keys.append(f"{key} ({kind}{f', {size(key)}' if size else ''})")
    return f"jobs by status {dict(rows)}; Redis keys: {', '.join(keys) or 'none'}"


@contextmanager
def stall_alarm(queue: str, seconds: float) -> Iterator[list[str]]:
    """Interrupts the main thread (KeyboardInterrupt, so `run_workers` stops its
    processes) when no job of ``queue`` completes for ``seconds``; yields a list that
    then holds the queue's state."""
    stalled: list[str] = []
    done = threading.Event()

    def watch() -> None:
        last, since = -1, time.monotonic()
        while not done.wait(1.0):
            completed = count_status(queue, "completed")
            if completed != last:
                last, since = completed, time.monotonic()
            elif time.monotonic() - since > seconds:
                stalled.append(queue_state(queue))
                _thread.interrupt_main()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield stalled
    finally:
        done.set()
        watcher.join()


def run_kind(
    system: str, kind: str, jobs: int, processes: int, workers: int, stall: float
) -> dict[str, Any]:
    module, extra = KINDS[kind]
    queue = new_queue_name(f"limits-{system}-{kind.replace('_', '-')}")
    with tempfile.TemporaryDirectory(prefix="kyu-bench-limits-runs-") as runs_dir:
        if kind.startswith("at_"):
            extra = [*extra, "--times", runs_dir]
        try:
            trio.run(enqueue_noops, queue, jobs)
            with stall_alarm(queue, stall) as stalled:
                try:
                    result: dict[str, Any] = run_workers(
                        module, queue, processes, workers, jobs, extra
                    )
                except KeyboardInterrupt:
                    if not stalled:
                        raise
                    raise RuntimeError(
                        f"{system} {kind}: no job completed for {stall:.0f} s: {stalled[0]}"
                    ) from None
            times = job_times(queue)
        finally:
            forget_queue(queue)
        result["busy_jobs_per_s"] = busy_rate(times)
        if kind.startswith("at_"):
            runs = handler_times(Path(runs_dir))
            result["handler_runs"] = len(runs)
            claims = [a for a, _ in times]
            allowance, per = (AT_CONCURRENCY, AT_SLEEP) if kind == "at_concurrency" else AT_RATE
            result["bound_per_s"] = allowance / per
            result["steady_starts_per_s"] = steady_rate(claims, allowance)
            if kind == "at_concurrency":
                result["max_running_handlers"] = max_running(runs)
            else:
                result["max_claims_in_window"] = max_in_window(claims, per)
                result["max_entries_in_window"] = max_in_window([a for a, _ in runs], per)
    return result


def one_round(
    system: str,
    kinds: Sequence[str],
    jobs: int,
    at_limit_jobs: int,
    processes: int,
    workers: int,
    stall: float,
) -> dict[str, Any]:
    result: dict[str, Any] = {"kyu_trio": check_library(system), "kinds": list(kinds)}
    try:
        for kind in kinds:
            n = at_limit_jobs if kind.startswith("at_") else jobs
            result[kind] = run_kind(system, kind, n, processes, workers, stall)
    finally:
        # Every round of both sides ends on a clean table, whatever it wrote.
        vacuum()
    result["schema_version"] = schema_version()
    return result


# ---- the report -----------------------------------------------------------------------


def differences(
    rounds: Sequence[dict[str, Any]], kind: str, per_job: Callable[[dict[str, Any]], float]
) -> dict[str, Any]:
    """Statistics of per_job(limited run) - per_job(unlimited run) over the rounds, in
    microseconds per job."""
    d = [per_job(r["current"][kind]) - per_job(r["current"]["unlimited"]) for r in rounds]
    return {**median_interval(d), "values": d}


def cost_figures(rounds: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    """What ``kind``'s limit costs against no limit, per claimed job."""
    r = ratios(rounds, f"current.{kind}", "current.unlimited", "busy_jobs_per_s")
    return {
        "busy_ratio": {**median_interval(r), "ratios": r},
        "wall_us_per_job": differences(rounds, kind, lambda f: 1e6 / f["busy_jobs_per_s"]),
        "worker_cpu_us_per_job": differences(
            rounds, kind, lambda f: 1e3 * f["worker_cpu_s_per_1k"]
        ),
        "postgres_cpu_us_per_job": differences(
            rounds, kind, lambda f: 1e3 * f["postgres_cpu_s_per_1k"]
        ),
        "redis_cpu_us_per_job": differences(rounds, kind, lambda f: 1e3 * f["redis_cpu_s_per_1k"]),
    }


def report(
    args: argparse.Namespace, rounds: list[dict[str, Any]], meta: dict[str, Any]
) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """The markdown summary, the figures of (a) with verdicts, those of (b) and (c), and
    the figures that regressed."""
    jobs, at_jobs = args.jobs
    med = statistics.median
    gated: dict[str, Any] = {}
    lines = [
        f"# Limits per job type: no regression without limits, and the cost of one "
        f"({len(rounds)} rounds)",
        "",
        f"Each run: {jobs:,} no-op jobs enqueued in batches of 1,000, then burnt down by "
        f"{args.processes} worker processes x {args.workers} workers (bench.throughput's "
        f"no-op job and settings). Baseline: {args.baseline} (before pausing and limits); "
        f"current: {meta['current']}. Ratio: median of the per-round ratios [interval for "
        "the median] (its coverage) | min-max.",
        "",
        "| job type without limits | baseline | current | current / baseline | min-max | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, key in [
        ("processed jobs/s (start of the processes to last completion)", "jobs_per_s"),
        ("processed jobs/s (first claim to last completion)", "busy_jobs_per_s"),
    ]:
        row, gated[label] = gated_row(rounds, label, "unlimited", key)
        lines.append(row)
    for label, key in [
        ("worker CPU s / 1k jobs (for information)", "worker_cpu_s_per_1k"),
        ("PostgreSQL CPU s / 1k jobs (for information)", "postgres_cpu_s_per_1k"),
    ]:
        stats = median_interval(ratios(rounds, "current.unlimited", "baseline.unlimited", key))
        lines.append(
            f"| {label} | {med([x['baseline']['unlimited'][key] for x in rounds]):.3f} | "
            f"{med([x['current']['unlimited'][key] for x in rounds]):.3f} | "
            f"{fmt_stats(stats)} | |"
        )

    cost = {kind: cost_figures(rounds, kind) for kind in LIMITED}
    lines += [
        "",
        "Current tree, the same no-op job registered with a limit it never reaches, against "
        "no limit (same round). Jobs/s from the first claim to the last completion; the "
        "costs are per claimed job, limited minus unlimited, in microseconds: wall time "
        f"(the fleet's, {args.processes} x {args.workers} workers, i.e. 1 / jobs per s) "
        "and CPU time of the workers, PostgreSQL and Redis; median [interval] (coverage) "
        "| min-max.",
        "",
        "| registered with | jobs/s, no limit | jobs/s, limited | limited / no limit | min-max "
        "| wall us / job | min-max | worker CPU us / job | min-max "
        "| PostgreSQL CPU us / job | min-max | Redis CPU us / job | min-max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, label in LIMITED.items():
        c = cost[kind]
        lines.append(
            f"| `{label}` "
            f"| {med([x['current']['unlimited']['busy_jobs_per_s'] for x in rounds]):,.0f} "
            f"| {med([x['current'][kind]['busy_jobs_per_s'] for x in rounds]):,.0f} "
            f"| {fmt_stats(c['busy_ratio'])} "
            f"| {fmt_stats(c['wall_us_per_job'], 1)} "
            f"| {fmt_stats(c['worker_cpu_us_per_job'], 1)} "
            f"| {fmt_stats(c['postgres_cpu_us_per_job'], 1)} "
            f"| {fmt_stats(c['redis_cpu_us_per_job'], 1)} |"
        )

    at_limit: dict[str, Any] = {}
    if at_jobs:
        lines += [
            "",
            f"Current tree, types at their limit ({at_jobs:,} jobs a run, the same "
            f"{args.processes} x {args.workers} workers). Steady starts/s = (jobs - the "
            "burst the limit allows at once) / (last start - first start), from the "
            "recorded claim times (`locked_at`), median [interval] (coverage) | min-max. "
            "Over every round: the most handlers running at once (wall-clock entry to "
            "exit, inside the time the job is `running`: above the limit would prove it "
            "broken) and the most starts in any window of the rate limit, by recorded "
            "claim time (the claiming worker's clock, read before its claim ran) and by "
            "handler entry (later than the claim by the dispatch delay, which can bunch "
            "them).",
            "",
            "| registered with | bound, jobs/s | steady starts/s | min-max | steady / bound "
            "| most handlers running at once | most claims in any window, recorded "
            "| most handler entries in any window |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind, label in [
            ("at_concurrency", f"`concurrency={AT_CONCURRENCY}`, jobs of {AT_SLEEP:g} s"),
            ("at_rate", f"`rate_limit=({AT_RATE[0]}, {AT_RATE[1]})`, no-op jobs"),
        ]:
            runs = [x["current"][kind] for x in rounds]
            fig: dict[str, Any] = {
                "bound_per_s": runs[0]["bound_per_s"],
                "steady_starts_per_s": median_interval([f["steady_starts_per_s"] for f in runs]),
            }
            for key in ("max_running_handlers", "max_claims_in_window", "max_entries_in_window"):
                if key in runs[0]:
                    fig[key] = max(f[key] for f in runs)
            at_limit[kind] = fig
            steady = fig["steady_starts_per_s"]
            lines.append(
                f"| {label} | {fig['bound_per_s']:,.0f} | {fmt_stats(steady, 1)} "
                f"| {steady['median'] / fig['bound_per_s']:.0%} "
                f"| {fig.get('max_running_handlers', '')} "
                f"| {fig.get('max_claims_in_window', '')} "
                f"| {fig.get('max_entries_in_window', '')} |"
            )

    text, failed = verdict_text(gated)
    lines += [
        "",
        text,
        f"Schema versions: baseline {meta['schema']['baseline']}, "
        f"current {meta['schema']['current']}.",
        f"Reproduce: `{meta['command']}`",
    ]
    return "\n".join(lines), gated, cost, at_limit, failed


# ---- the run ----------------------------------------------------------------------------


def parse_jobs(text: str) -> tuple[int, int]:
    if text in SIZES:
        return SIZES[text]
    jobs = int(text)
    if jobs < 1000:
        raise argparse.ArgumentTypeError("--jobs: small, full, or at least 1000")
    return jobs, SIZES["full"][1]


def child_main(args: argparse.Namespace) -> None:
    result = one_round(
        args.child,
        args.child_kinds.split(","),
        args.jobs[0],
        args.at_limit_jobs,
        args.processes,
        args.workers,
        args.stall,
    )
    Path(args.child_out).write_text(json.dumps(result, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--jobs",
        type=parse_jobs,
        default="full",
        help="small (2,000 jobs a run, 400 at a limit), full (20,000; 1,000), or a number",
    )
    parser.add_argument(
        "--at-limit-jobs",
        type=int,
        help="jobs a run of (c), types at their limit (0: skip (c)); default from --jobs",
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=50, help="workers per process")
    parser.add_argument("--baseline", default=BASELINE, help="git revision without limits")
    parser.add_argument(
        "--stall",
        type=float,
        default=120.0,
        help="fail when no job completes for this many seconds (default 120)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    # One round of one side, in its own tree: started by the run, not by hand.
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-kinds", default="unlimited", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.at_limit_jobs is None:
        args.at_limit_jobs = args.jobs[1]
    args.jobs = (args.jobs[0], args.at_limit_jobs)
    if args.child:
        child_main(args)
        return
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    least = 2 * max(AT_CONCURRENCY, AT_RATE[0])
    if args.at_limit_jobs and args.at_limit_jobs < least:
        parser.error(f"--at-limit-jobs: 0 or at least {least} (twice the burst a limit allows)")
    preset = next((name for name, size in SIZES.items() if size == args.jobs), None)
    command = (
        f".venv/bin/python -m bench.limits --rounds {args.rounds} "
        + (
            f"--jobs {preset}"
            if preset
            else f"--jobs {args.jobs[0]} --at-limit-jobs {args.at_limit_jobs}"
        )
        + f" --processes {args.processes} --workers {args.workers}"
        + (f" --baseline {args.baseline}" if args.baseline != BASELINE else "")
    )
    meta: dict[str, Any] = {"command": command, "current": describe_current()}

    def child_args(i: int, system: str) -> list[str]:
        if system == "baseline":
            kinds = ["unlimited"]
        else:
            # (b)'s three runs rotate, so that each comes first, second and third in turn.
            k = i % len(UNLIMITED_ORDER)
            kinds = UNLIMITED_ORDER[k:] + UNLIMITED_ORDER[:k]
            if args.at_limit_jobs:
                kinds += ["at_concurrency", "at_rate"]
        return [
            "--child-kinds",
            ",".join(kinds),
            "--jobs",
            str(args.jobs[0]),
            "--at-limit-jobs",
            str(args.at_limit_jobs),
            "--processes",
            str(args.processes),
            "--workers",
            str(args.workers),
            "--stall",
            str(args.stall),
        ]

    def headline(result: dict[str, Any]) -> str:
        return ", ".join(
            f"{kind} {result[kind]['busy_jobs_per_s']:,.0f} jobs/s" for kind in result["kinds"]
        )

    rounds, meta["schema"] = run_rounds(
        "limits", "bench.limits", args.baseline, args.rounds, child_args, headline
    )
    summary, gated, cost, at_limit, failed = report(args, rounds, meta)
    data = {
        "machine": machine(),
        "args": {**vars(args), "jobs": list(args.jobs)},
        **meta,
        "no_regression": gated,
        "limit_cost": cost,
        "at_limit": at_limit,
        "rounds": rounds,
    }
    if args.no_save:
        print(summary)
    else:
        write_results("limits", data, summary)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
