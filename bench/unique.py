"""Unique jobs (issue 13, point 8): no regression for jobs without a ``unique_key``, and
what a key costs.

    .venv/bin/python -m bench.unique --rounds 7 --jobs full

In one run, with rounds interleaved so that drift of the machine hits both sides alike:

(a) enqueued jobs/s without a key (one by one, and ``enqueue_many`` batches of 1,000),
    and (b) processed jobs/s (``bench.throughput``'s no-op job and worker settings):
    the baseline, commit 885cb91 (the parent of the unique-jobs commit, checked out with
    ``git worktree`` in a temporary directory), against the current working tree;
(c) on the current tree only, enqueued jobs/s with a distinct ``unique_key`` per job
    against without one, one by one and in batches.

Each side runs in its own subprocesses with its own ``kyu_trio`` (``PYTHONPATH`` and the
working directory point at its tree; both use this venv), its own scratch database
(created and dropped here: the baseline migrates it to schema version 4, the current
tree to its own, later version; a check after every round fails the run if a baseline
database was migrated further, i.e. if current code ran against it) and its own queue
names. The measuring code is the same on both sides: this tree's ``bench/`` is copied
over the baseline's, so only the library differs.

Rounds: round i runs both sides back to back, the baseline first in even rounds and the
current tree first in odd ones (A B | B A | A B ...), so neither always goes first. Each
figure is reported as the median of the per-round ratios (current / baseline, or keyed /
keyless) with a distribution-free interval for that median (order statistics of the
ratios; the widest one whose coverage is at least 90 %, or min..max when there are
too few rounds for 90 %, with its coverage printed) and min..max.

Verdict for (a) and (b), per figure: **regression** when the whole interval lies below
0.95 (slower by more than 5 % beyond the round-to-round noise), exit status 1; it needs
an interval of 90 % coverage, so 5 rounds or more. **inconclusive** when the median is
below 0.95 but the interval reaches above it or covers less than 90 % (run more rounds
on a quieter machine); **ok** otherwise. Servers: KYU_DSN (its database is
used only to create and drop the scratch ones) and KYU_REDIS_URL, default 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

from kyu_trio import Config, EnqueueRequest, Queue

from ._common import DSN, REDIS_URL, machine, new_queue_name, run_workers, vacuum
from ._common import write_results as _write_results
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
from .throughput import cleanup, enqueue_figures

BASELINE = "885cb91"
# --jobs presets: (jobs per batch run and per worker run, jobs enqueued one by one).
SIZES = {"small": (2_000, 200), "full": (20_000, 2_000)}


# ---- one round of one side (runs in a subprocess, with that side's kyu_trio) ----------


async def keyed_enqueue_figures(queue_name: str, jobs: int, single: int) -> dict[str, float]:
    """`bench.throughput.enqueue_figures` with a distinct ``unique_key`` on every job: the
    same queues, the same timing, batches of 1,000 (built before the clock starts, as
    the keyless batch is)."""
    queue = Queue(Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name, metrics_port=0))
    single_queue = Queue(
        Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name + "-single", metrics_port=0)
    )
    batches = [
        [EnqueueRequest("noop", "", unique_key=f"k{b}-{i}") for i in range(1000)]
        for b in range(jobs // 1000)
    ]
    async with queue, single_queue:
        started = time.perf_counter()
        for i in range(single):
            await single_queue.enqueue("noop", "", unique_key=f"k{i}")
        single_rate = single / (time.perf_counter() - started)
        started = time.perf_counter()
        for batch in batches:
            await queue.enqueue_many(batch)
        bulk_rate = jobs / (time.perf_counter() - started)
    return {"single_enqueue_per_s": single_rate, "bulk_enqueue_per_s": bulk_rate}


def one_round(
    system: str, jobs: int, single: int, processes: int, workers: int, keyed: str
) -> dict[str, Any]:
    """(a) and (b) for ``system``; with ``keyed`` ("first" or "last"), (c) afterwards:
    keyless and keyed enqueues into fresh queues, in that order of the two."""
    queue = new_queue_name(system)
    used = [queue, queue + "-single"]
    result: dict[str, Any] = {"kyu_trio": check_library(system)}
    try:
        result["enqueue"] = trio.run(enqueue_figures, queue, jobs, single)
        result["processed"] = run_workers("bench._kyu_worker", queue, processes, workers, jobs)
        if keyed != "none":
            cleanup(*used)
            order = ["keyless", "keyed"] if keyed == "last" else ["keyed", "keyless"]
            for kind in order:
                q = new_queue_name(f"{system}-{kind}")
                used += [q, q + "-single"]
                measure = keyed_enqueue_figures if kind == "keyed" else enqueue_figures
                result[kind] = trio.run(measure, q, jobs, single)
    finally:
        cleanup(*used)
        # Every round of both sides ends on a clean table, whatever it wrote.
        vacuum()
    result["schema_version"] = schema_version()
    return result


# ---- the run ----------------------------------------------------------------------------


def parse_jobs(text: str) -> tuple[int, int]:
    if text in SIZES:
        return SIZES[text]
    jobs = int(text) - int(text) % 1000
    if jobs < 1000:
        raise argparse.ArgumentTypeError("--jobs: small, full, or at least 1000")
    return jobs, max(100, jobs // 10)


def report(
    args: argparse.Namespace, rounds: list[dict[str, Any]], meta: dict[str, Any]
) -> tuple[str, dict[str, Any], dict[str, Any], list[str]]:
    """The markdown summary, the figures of (a) and (b) with verdicts, those of (c), and
    the figures that regressed."""
    jobs, single = args.jobs
    med = statistics.median
    regression_rows = [
        ("enqueue one by one, jobs/s", "enqueue", "single_enqueue_per_s"),
        ("enqueue_many (batches of 1,000), jobs/s", "enqueue", "bulk_enqueue_per_s"),
        ("processed jobs/s", "processed", "jobs_per_s"),
    ]
    gated: dict[str, Any] = {}
    lines = [
        f"# Unique jobs: no regression without a key, and the cost of one ({len(rounds)} rounds)",
        "",
        f"Each round: {single:,} jobs enqueued one by one, {jobs:,} in batches of 1,000, "
        f"then burnt down by {args.processes} worker processes x {args.workers} workers "
        f"(bench.throughput's no-op job). Baseline: {args.baseline} (before unique jobs); "
        f"current: {meta['current']}. Ratio: median of the per-round ratios "
        f"[interval for the median] (its coverage) | min-max.",
        "",
        "| without a unique_key | baseline | current | current / baseline | min-max | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, section, key in regression_rows:
        row, gated[label] = gated_row(rounds, label, section, key)
        lines.append(row)
    cpu = ratios(rounds, "current.processed", "baseline.processed", "worker_cpu_s_per_1k")
    cpu_stats = median_interval(cpu)
    lines.append(
        "| worker CPU s / 1k jobs (for information) | "
        f"{med([x['baseline']['processed']['worker_cpu_s_per_1k'] for x in rounds]):.3f} | "
        f"{med([x['current']['processed']['worker_cpu_s_per_1k'] for x in rounds]):.3f} | "
        f"{fmt_stats(cpu_stats)} | |"
    )
    cost: dict[str, Any] = {}
    lines += [
        "",
        "| current tree | without a key | a distinct unique_key per job | with / without "
        "| min-max |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key in [
        ("enqueue one by one, jobs/s", "single_enqueue_per_s"),
        ("enqueue_many (batches of 1,000), jobs/s", "bulk_enqueue_per_s"),
    ]:
        r = ratios(rounds, "current.keyed", "current.keyless", key)
        stats = median_interval(r)
        cost[label] = {**stats, "ratios": r}
        without = med([x["current"]["keyless"][key] for x in rounds])
        with_key = med([x["current"]["keyed"][key] for x in rounds])
        lines.append(f"| {label} | {without:,.0f} | {with_key:,.0f} | {fmt_stats(stats)} |")
    text, failed = verdict_text(gated)
    lines += [
        "",
        text,
        f"Schema versions: baseline {meta['schema']['baseline']}, "
        f"current {meta['schema']['current']}.",
        f"Reproduce: `{meta['command']}`",
    ]
    return "\n".join(lines), gated, cost, failed


def child_main(args: argparse.Namespace) -> None:
    result = one_round(
        args.child, args.jobs[0], args.single, args.processes, args.workers, args.child_keyed
    )
    Path(args.child_out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--jobs",
        type=parse_jobs,
        default="full",
        help="small (2,000 + 200 one by one), full (20,000 + 2,000), or a number",
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=50, help="workers per process")
    parser.add_argument("--baseline", default=BASELINE, help="git revision without unique jobs")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    # One round of one side, in its own tree: started by the run, not by hand.
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument(
        "--child-keyed", choices=["none", "first", "last"], default="none", help=argparse.SUPPRESS
    )
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    jobs_arg = next((name for name, size in SIZES.items() if size == args.jobs), str(args.jobs[0]))
    command = (
        f".venv/bin/python -m bench.unique --rounds {args.rounds} --jobs {jobs_arg} "
        f"--processes {args.processes} --workers {args.workers}"
        + (f" --baseline {args.baseline}" if args.baseline != BASELINE else "")
    )
    meta: dict[str, Any] = {"command": command, "current": describe_current()}

    def child_args(i: int, system: str) -> list[str]:
        jobs, single = args.jobs
        # (c)'s two kinds alternate too, from one round to the next.
        keyed = "none" if system == "baseline" else ("last" if i % 2 == 0 else "first")
        return [
            "--child-keyed",
            keyed,
            "--jobs",
            str(jobs),
            "--single",
            str(single),
            "--processes",
            str(args.processes),
            "--workers",
            str(args.workers),
        ]

    rounds, meta["schema"] = run_rounds(
        "unique",
        "bench.unique",
        args.baseline,
        args.rounds,
        child_args,
        lambda result: f"processed {result['processed']['jobs_per_s']:,.0f} jobs/s",
    )
    summary, gated, cost, failed = report(args, rounds, meta)
    data = {
        "machine": machine(),
        "args": {**vars(args), "jobs": list(args.jobs)},
        **meta,
        "no_regression": gated,
        "unique_key_cost": cost,
        "rounds": rounds,
    }
    if args.no_save:
        print(summary)
    else:
        _write_results("unique", data, summary)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
