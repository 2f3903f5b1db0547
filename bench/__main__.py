"""Every benchmark in one invocation, then one summary table against the targets.

    ./scripts/bench.sh            # set-up (venv, servers, bench packages), then this
    .venv/bin/python -m bench     # the same, once set up
    .venv/bin/python -m bench --quick

Runs, one after another on the same servers: dispatch, throughput (with the floor),
latency, peers (each peer installed into bench/.venvs/<peer> on first use) and scale.
Each writes bench/results/<name>.md|json; this writes bench/results/SUMMARY.md from
them and prints it. ``--only`` runs a subset; the summary then uses the results already
on disk for the rest (and says when each was measured).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from ._common import RESULTS, ROOT, machine

FULL: dict[str, list[str]] = {
    "dispatch": [],
    "throughput": ["--jobs", "50000", "--processes", "2", "--workers", "50"],
    "floor": ["--curve", "--jobs", "20000"],
    "latency": ["--rates", "100", "500", "2000", "--seconds", "10"],
    "peers": ["--jobs", "20000", "--processes", "2", "--single", "2000", "--repeat", "3"],
    "scale": [
        "--jobs",
        "20000",
        "--processes",
        "1",
        "2",
        "4",
        "--history",
        "10000",
        "1000000",
        "5000000",
        "--scheduled",
        "100000",
    ],
}
QUICK: dict[str, list[str]] = {
    "dispatch": [],
    "throughput": ["--jobs", "10000", "--single", "1000", "--processes", "2"],
    "floor": ["--curve", "--jobs", "5000", "--processes", "1,2", "--loops", "1,4"],
    "latency": ["--rates", "100", "500", "--seconds", "3"],
    "peers": [
        "--jobs",
        "5000",
        "--processes",
        "2",
        "--single",
        "500",
        "--peers",
        "pgqueuer,dramatiq,huey",
    ],
    "scale": [
        "--jobs",
        "5000",
        "--processes",
        "1",
        "2",
        "--history",
        "10000",
        "100000",
        "--scheduled",
        "10000",
    ],
}


def run(name: str, args: list[str]) -> float:
    command = [sys.executable, "-m", f"bench.{name}", *args]
    print(f"\n=== {' '.join(['python', '-m', f'bench.{name}', *args])}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env=os.environ.copy())
    return time.perf_counter() - started


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    data["_mtime"] = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    return data


def best_peer(
    systems: dict[str, Any], key: str, store: str | None = None
) -> tuple[str, float] | None:
    """The peer with the highest median ``key`` (kyu-trio's own rows left out)."""
    from .peers import PEERS

    best: tuple[str, float] | None = None
    for name, system in systems.items():
        if name not in PEERS or (store and PEERS[name].store != store):
            continue
        value = system.get(key)
        if value and (best is None or value > best[1]):
            best = (name, float(value))
    return best


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def summary() -> str:
    rows: list[tuple[str, str, str, str, str]] = []
    when: list[str] = []

    peers = load("peers")
    if peers is not None:
        when.append(f"peers {peers['_mtime']}")
        systems = peers["systems"]
        kyu, incr = systems.get("kyu-trio", {}), systems.get("kyu-trio + INCR", {})
        workers = peers["args"]["workers"]
        compared: list[tuple[float | None, str, float | None, str | None, str]] = [
            (
                incr.get("processed_jobs_per_s"),
                f"processed jobs/s at equal concurrency ({workers} per process; the peers' "
                "INCR job body for all) (bench.peers)",
                2.0,
                None,
                "processed_jobs_per_s",
            ),
            (
                kyu.get("processed_jobs_per_s"),
                "processed jobs/s, kyu-trio's no-op handler without the INCR (bench.peers)",
                None,
                None,
                "processed_jobs_per_s",
            ),
            (
                kyu.get("bulk_enqueue_per_s"),
                "bulk enqueue jobs/s (bench.peers)",
                2.0,
                None,
                "bulk_enqueue_per_s",
            ),
        ]
        for key, how in (
            ("single_enqueue_per_s", "Queue"),
            ("single_enqueue_client_per_s", "Client"),
            ("single_enqueue_asyncio_per_s", "AsyncioClient"),
        ):
            compared.append(
                (
                    kyu.get(key),
                    f"single enqueue jobs/s, durable on return, {how} (bench.peers)",
                    1.2,
                    "PostgreSQL",
                    "single_enqueue_per_s",
                )
            )
        compared.append(
            (
                kyu.get("bulk_enqueue_floor_per_s"),
                "bulk enqueue jobs/s, bare NEXT_SEQS + COPY + ZADD loop (its floor) (bench.peers)",
                None,
                None,
                "bulk_enqueue_per_s",
            )
        )
        for key, how in (
            ("single_enqueue_transactional_per_s", "in the caller's transaction (conn=)"),
            ("single_enqueue_floor_per_s", "bare blocking INSERT + ZADD loop (the floor)"),
            ("single_insert_floor_per_s", "bare blocking INSERT alone, no push (one statement)"),
        ):
            compared.append(
                (
                    kyu.get(key),
                    f"single enqueue jobs/s, {how} (bench.peers)",
                    None,
                    "PostgreSQL",
                    "single_enqueue_per_s",
                )
            )
        compared.append(
            (
                kyu.get("single_enqueue_per_s"),
                "single enqueue jobs/s, Queue, vs Redis-only peers (not durable on return)",
                None,
                "Redis",
                "single_enqueue_per_s",
            )
        )
        for ours, label, target, store, key in compared:
            best = best_peer(systems, key, store)
            if not ours or best is None:
                continue
            ratio = ours / best[1]
            rows.append(
                (
                    label,
                    f"{ours:,.0f}",
                    f"{best[0]} {best[1]:,.0f}",
                    f"{ratio:.2f}x",
                    f">= {target:g}x: {verdict(ratio >= target)}" if target else "reported",
                )
            )
    # Each at its own defaults, on the peers' job: the "Defaults" section of bench.peers,
    # from its last run with or without --defaults-only.
    runs = [
        r
        for r in (load("peers"), load("peers-defaults"))
        if r is not None and "kyu-trio at its defaults" in r["systems"]
    ]
    if runs:
        latest = max(runs, key=lambda r: r["date"])
        when.append(f"defaults {latest['_mtime']}")
        systems = latest["systems"]
        ours = systems["kyu-trio at its defaults"].get("processed_jobs_per_s")
        theirs = systems.get("pgqueuer at its defaults", {}).get("processed_jobs_per_s")
        if ours and theirs:
            rows.append(
                (
                    "processed jobs/s, kyu-trio and pgqueuer each at its defaults "
                    "(bench.peers --defaults-only)",
                    f"{ours:,.0f}",
                    f"pgqueuer {theirs:,.0f}",
                    f"{ours / theirs:.2f}x",
                    f">= 2x: {verdict(ours >= 2 * theirs)}",
                )
            )

    floor = load("floor")
    if floor is not None:
        when.append(f"floor {floor['_mtime']}")
        best = floor["floor"]
        where = f"{best['processes']} x {best['loops']} loops"
        for point in floor["points"]:
            if point["system"] == "floor":
                continue
            share = point["jobs_per_s"] / best["jobs_per_s"]
            rows.append(
                (
                    f"processed jobs/s, {point['system']}, vs the concurrent floor "
                    "(bench.floor --curve, INCR job body)",
                    f"{point['jobs_per_s']:,.0f}",
                    f"floor {best['jobs_per_s']:,.0f} ({where})",
                    f"{share:.0%}",
                    f">= 70%: {verdict(share >= 0.70)}",
                )
            )

    throughput = load("throughput")
    if throughput is not None:
        when.append(f"throughput {throughput['_mtime']}")
        fraction = throughput["kyu_fraction_of_floor"]
        rows.append(
            (
                "processed jobs/s vs the bare batched loop (bench.throughput)",
                f"{throughput['kyu']['jobs_per_s']:,.0f}",
                f"floor {throughput['floor']['jobs_per_s']:,.0f}",
                f"{fraction:.0%}",
                f">= 60%: {verdict(fraction >= 0.6)}",
            )
        )
        floor_single = throughput["enqueue"].get("single_floor_per_s")
        if floor_single:
            ours = throughput["enqueue"]["single_enqueue_per_s"]
            rows.append(
                (
                    "single enqueue jobs/s vs a bare blocking INSERT + ZADD loop "
                    "(bench.throughput)",
                    f"{ours:,.0f}",
                    f"floor {floor_single:,.0f}",
                    f"{ours / floor_single:.0%}",
                    "",
                )
            )
        rows.append(
            (
                "worker CPU s per 1,000 jobs (bench.throughput)",
                f"{throughput['kyu']['worker_cpu_s_per_1k']:.3f}",
                f"floor {throughput['floor']['worker_cpu_s_per_1k']:.3f}",
                "",
                "",
            )
        )

    latency = load("latency")
    if latency is not None:
        when.append(f"latency {latency['_mtime']}")
        for r in latency["runs"]:
            bound = {500: 5.0, 2000: 20.0}.get(r["rate"])
            target = f"p99 < {bound:g} ms: {verdict(r['p99_ms'] < bound)}" if bound else ""
            rows.append(
                (
                    f"pickup latency at {r['rate']:,}/s, p50 / p99 (bench.latency)",
                    f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms",
                    "",
                    "",
                    target,
                )
            )

    scale = load("scale")
    if scale is not None and scale.get("history"):
        when.append(f"scale {scale['_mtime']}")
        history = {int(k): v for k, v in scale["history"].items()}
        small, large = min(history), max(history)
        cost = history[small]["jobs_per_s"] / history[large]["jobs_per_s"]
        rows.append(
            (
                f"per-job cost, {large:,} vs {small:,} rows in the table (bench.scale)",
                f"{cost:.2f}x",
                "",
                "",
                f"<= 1.2x: {verdict(cost <= 1.2)}"
                if large >= 5_000_000
                else "target is for 5M rows",
            )
        )
        for processes, r in sorted(scale.get("processes", {}).items()):
            rows.append(
                (
                    f"processed jobs/s, {processes} worker process(es) (bench.scale)",
                    f"{r['jobs_per_s']:,.0f}",
                    "",
                    "",
                    "",
                )
            )
        if scale.get("scheduler"):
            s = scale["scheduler"]
            rows.append(
                (
                    f"scheduler tick promoting {s['scheduled']:,} due jobs (bench.scale)",
                    f"{s['promote_all_s']:.2f} s",
                    f"PostgreSQL alone {s['promote_in_server_s']:.2f} s"
                    if "promote_in_server_s" in s
                    else f"idle tick {s['idle_tick_s'] * 1000:.1f} ms",
                    "",
                    f"< 2 s: {verdict(s['promote_all_s'] < 2)}",
                )
            )

    soak = load("soak")
    if soak is not None:
        when.append(f"soak {soak['_mtime']}")
        growth = max(w["rss_end_mb"] / w["rss_start_mb"] - 1 for w in soak["workers"])
        rows.append(
            (
                f"worker RSS growth over a {int(soak['args']['jobs']):,}-job soak, start to end "
                "(bench.soak)",
                f"{growth:+.1%}",
                "",
                "",
                f"within 10%: {verdict(abs(growth) <= 0.10)}",
            )
        )

    dispatch = load("dispatch")
    if dispatch is not None:
        when.append(f"dispatch {dispatch['_mtime']}")
        us = dispatch["execute_ns"] / 1000
        rows.append(
            (
                "dispatch: execute, no I/O (bench.dispatch)",
                f"{us:.1f} µs",
                "kyu (Go) ~0.95 µs",
                "",
                f"< 10 µs: {verdict(us < 10)}",
            )
        )

    m = machine()
    lines = [
        "# Benchmark summary",
        "",
        f"Machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}; PostgreSQL and "
        "Redis on the same machine.",
        f"Measured: {', '.join(when)}.",
        "",
        "| what | kyu-trio | compared with | ratio | target |",
        "|---|---:|---:|---:|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
        "",
        "Reproduce: `./scripts/bench.sh` (or `.venv/bin/python -m bench`). Details per bench:",
        "bench/results/<name>.md.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 peers (minutes)")
    parser.add_argument("--only", nargs="*", choices=list(FULL), help="run only these")
    parser.add_argument("--summary-only", action="store_true", help="rewrite SUMMARY.md only")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if not args.summary_only:
        for name in args.only or list(plan):
            seconds = run(name, plan[name])
            print(f"=== bench.{name}: {seconds:.0f} s", flush=True)
    text = summary()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "SUMMARY.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
