"""Pausing and fleet-wide limits with real worker processes on real servers (issue 14,
points 2, 3 and 4). Each worker process records when each of its handlers started and
ended, and prints the records as JSON when it stops."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Any

import psycopg
import pytest

from kyu_trio import Client, Config

pytestmark = pytest.mark.integration


WORKER = """
import json, sys, time, trio
from kyu_trio import Config, Queue
dsn, redis_url, queue_name, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
queue = Queue(Config(dsn=dsn, redis_url=redis_url, queue_name=queue_name, workers=workers,
                     metrics_port=0, shutdown_grace=10, scheduler_interval=0.5))
records = []

def recorder(job_type, seconds):
    async def run(payload):
        start = time.time()
        await trio.sleep(seconds)
        records.append((job_type, payload, start, time.time()))
    return run

queue.register("t", recorder("t", 0.3))
queue.register("a", recorder("a", 0.1), concurrency=3)
queue.register("b", recorder("b", 0.1))
queue.register("r", recorder("r", 0.0), rate_limit=(10, 1.0))

async def main():
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        print("ready", flush=True)

trio.run(main)
print(json.dumps(records), flush=True)
"""


class Workers:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.procs: list[subprocess.Popen[str]] = []
        self.records: list[tuple[str, Any, float, float]] = []

    def start(self, workers: int) -> None:
        c = self.config
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, c.dsn, c.redis_url, c.queue_name, str(workers)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        self.procs.append(proc)

    def stop(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        self.records += [tuple(r) for r in json.loads(out.strip().splitlines()[-1])]
        self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def wait_until(predicate: Any, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def counts(client: Client) -> dict[str, int]:
    return {s.value: n for s, n in client.stats().counts.items()}


def test_pause_stops_claims_within_2s_survives_a_restart_and_resume_drains(
    make_config: Any,
) -> None:
    config = make_config(workers=4)
    workers = Workers(config)
    try:
        with Client(config) as client:
            ids = client.enqueue_many([("t", i) for i in range(80)])
            workers.start(4)
            workers.start(4)
            wait_until(lambda: counts(client)["completed"] >= 8)
            client.pause()
            paused_at = time.time()
            assert client.is_paused()
            time.sleep(3)
            # Running jobs finished; none is left running.
            assert counts(client)["running"] == 0
            # A worker restarted while paused stays paused.
            workers.stop(workers.procs[0])
            workers.start(4)
            time.sleep(2)
            assert counts(client)["running"] == 0
            assert client.stats().paused
            done_while_paused = counts(client)["completed"]
            assert done_while_paused < 80
            client.resume()
            resumed_at = time.time()
            wait_until(lambda: counts(client)["completed"] == 80)
            assert {client.inspect(i).status.value for i in ids} == {"completed"}
        workers.stop_all()
    finally:
        workers.kill_all()
    starts = sorted(r[2] for r in workers.records)
    late = [s for s in starts if paused_at + 2 < s < resumed_at]
    print(
        f"\npause: last start {max(s for s in starts if s < resumed_at) - paused_at:+.3f} s "
        f"after pause(); first start {min(s for s in starts if s >= resumed_at) - resumed_at:.3f}"
        " s after resume()"
    )
    assert late == []


def test_concurrency_limit_holds_across_processes_without_blocking_other_types(
    make_config: Any,
) -> None:
    config = make_config(workers=20)
    workers = Workers(config)
    try:
        with Client(config) as client:
            # The limited backlog is ahead of the other type in the queue.
            client.enqueue_many([("a", i) for i in range(200)])
            client.enqueue_many([("b", i) for i in range(200)])
            workers.start(20)
            workers.start(20)
            wait_until(lambda: counts(client)["completed"] == 400, limit=120)
        workers.stop_all()
    finally:
        workers.kill_all()
    a = [(r[2], r[3]) for r in workers.records if r[0] == "a"]
    edges = sorted([(s, 1) for s, _ in a] + [(e, -1) for _, e in a])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    a_end = max(e for _, e in a)
    b_end = max(r[3] for r in workers.records if r[0] == "b")
    first = min(r[2] for r in workers.records)
    print(
        f"\nconcurrency=3: most A jobs running at once {most}; A backlog done after "
        f"{a_end - first:.2f} s, every B job after {b_end - first:.2f} s"
    )
    assert len(a) == 200
    assert most <= 3
    assert b_end - first < (a_end - first) / 3


def test_a_rate_limit_holds_in_every_window_across_processes(make_config: Any) -> None:
    config = make_config(workers=10)
    workers = Workers(config)
    try:
        with Client(config) as client:
            client.enqueue_many([("r", i) for i in range(60)])
            workers.start(10)
            workers.start(10)
            t0 = time.time()
            wait_until(lambda: counts(client)["completed"] == 60)
            took = time.time() - t0
        workers.stop_all()
    finally:
        workers.kill_all()
    # A start is a claim, as PostgreSQL recorded it (locked_at); the handlers' own entry
    # times follow their claims within milliseconds, and are reported too.
    with psycopg.connect(config.dsn) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM locked_at) FROM kyu_jobs WHERE queue = %s",
            (config.queue_name,),
        ).fetchall()
    claims = sorted(float(r[0]) for r in rows)
    entries = sorted(r[2] for r in workers.records)
    most, most_entered = most_in_a_window(claims, 1.0), most_in_a_window(entries, 1.0)
    rate = (len(claims) - 1) / (claims[-1] - claims[0])
    print(
        f"\nrate_limit=(10, 1.0): most claims in a 1 s window {most} (handler entries: "
        f"{most_entered}); {rate:.1f} starts/s"
    )
    assert len(claims) == 60
    assert most <= 10
    assert rate > 8.0
    assert took < 12


def most_in_a_window(times: list[float], width: float) -> int:
    window: deque[float] = deque()
    most = 0
    for t in times:
        window.append(t)
        while window[0] <= t - width:
            window.popleft()
        most = max(most, len(window))
    return most


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (
            "pausing.py",
            ["paused: True - exported while paused: []", "resumed - exported: [1]"],
        ),
        (
            "limits.py",
            ["most API calls at once: 2", "receipts all sent before the last API call: True"],
        ),
    ],
)
def test_the_pausing_and_limits_examples(
    run_example: Any, example: str, expected: list[str]
) -> None:
    """examples/pausing.py and examples/limits.py (docs/how-to/pausing.md, limits.md)."""
    assert run_example(example).stdout.splitlines() == expected
