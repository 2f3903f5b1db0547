"""Pickup latency: from `enqueue` returning (the job is durable) to its handler starting,
at steady rates, with workers that sit idle in a blocking pop between jobs.

    .venv/bin/python -m bench.latency --rates 100 500 2000 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import redis
import trio

from kyu_trio import Config, EnqueueRequest, Queue

from ._common import DSN, REDIS_URL, RESULTS, ROOT, machine, new_queue_name, write_results
from .throughput import cleanup

TICK = 0.01  # the enqueuer sends rate * TICK jobs every 10 ms


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def produce(queue_name: str, rate: int, seconds: float) -> dict[str, float]:
    """Enqueue at ``rate`` for ``seconds``; return job id -> wall time enqueue returned."""
    queue = Queue(Config(dsn=DSN, redis_url=REDIS_URL, queue_name=queue_name, metrics_port=0))
    returned: dict[str, float] = {}
    in_flight = trio.CapacityLimiter(16)  # enqueues overlap so a slow one delays no tick

    async def send(n: int) -> None:
        async with in_flight:
            ids = await queue.enqueue_many([EnqueueRequest("stamp", "")] * n)
            now = time.time()
            returned.update(dict.fromkeys(ids, now))

    async with queue, trio.open_nursery() as nursery:
        start, tick, carry = trio.current_time(), 0, 0.0
        while trio.current_time() - start < seconds:
            carry += rate * TICK
            n, carry = int(carry), carry - int(carry)
            if n:
                nursery.start_soon(send, n)
            tick += 1
            await trio.sleep_until(start + tick * TICK)
    return returned


def measure(rate: int, seconds: float, workers: int) -> dict[str, Any]:
    queue_name = new_queue_name(f"lat{rate}")
    key = f"{queue_name}:results"
    client = redis.Redis.from_url(REDIS_URL)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._latency_worker", queue_name, str(workers), key],
        cwd=ROOT,
        env={**os.environ, "KYU_DSN": DSN, "KYU_REDIS_URL": REDIS_URL},
    )
    try:
        time.sleep(2.0)  # let the worker connect and go idle
        returned = trio.run(produce, queue_name, rate, seconds)
        sent = len(returned)
        deadline = time.monotonic() + 60
        while client.llen(key) < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        latencies = []
        for item in client.lrange(key, 0, -1):
            job_id, started = item.decode().split()
            latencies.append((float(started) - returned[job_id]) * 1000)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        client.delete(key)
        cleanup(queue_name)
    return {
        "rate": rate, "sent": sent, "received": len(latencies),
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99), "mean_ms": statistics.fmean(latencies),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=50)
    args = parser.parse_args()
    runs = [measure(rate, args.seconds, args.workers) for rate in args.rates]
    lines = [
        f"# Pickup latency, enqueue -> handler start (one worker process, {args.workers} workers)",
        "",
        "| rate (jobs/s) | jobs | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|",
        *[
            f"| {r['rate']} | {r['received']}/{r['sent']} | {r['p50_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} |"
            for r in runs
        ],
        "",
        "Reproduce: `.venv/bin/python -m bench.latency --rates "
        f"{' '.join(map(str, args.rates))} --seconds {args.seconds:g}`",
    ]
    write_results(
        "latency", {"machine": machine(), "args": vars(args), "runs": runs}, "\n".join(lines)
    )
    plot(runs)


def plot(runs: list[dict[str, Any]]) -> None:
    """bench/results/latency.png: p50/p95/p99 per rate (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "latency: matplotlib is not importable (pip install -r bench/requirements.txt);"
            " no plot drawn"
        )
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.25
    for i, key in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        ax.bar(
            [x + (i - 1) * width for x in range(len(runs))],
            [r[key] for r in runs],
            width,
            label=key.split("_")[0],
        )
    ax.set_xticks(range(len(runs)), [f"{r['rate']:,}/s" for r in runs])
    ax.set_ylabel("enqueue -> handler start (ms)")
    ax.set_title("kyu-trio pickup latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "latency.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
