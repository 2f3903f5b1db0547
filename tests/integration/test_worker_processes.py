"""``kyu-trio worker APP --processes N``: the supervisor and its worker processes, against
real servers. Every supervisor runs as a subprocess, as an operator runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from kyu_trio import Config, Queue
from kyu_trio._supervisor import CHILD_ENV, Supervisor
from tests.conftest import free_port

pytestmark = pytest.mark.integration

APP = """
import trio
from kyu_trio import Config, Queue

queue = Queue(Config.from_env(
    workers=4, shutdown_grace=5.0, scheduler_interval=0.2, heartbeat_interval=0.3,
    stale_job_timeout=2.0, reaper_interval=0.5,
))


@queue.handler("sleep")
async def sleep(payload: str) -> None:
    await trio.sleep(float(payload))
"""


@pytest.fixture
def app(tmp_path: Path) -> str:
    """A module in tmp_path (the supervisor's working directory); returns its APP spec."""
    name = f"kyu_procs_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP)
    return f"{name}:queue"


@pytest.fixture
def env(pg_dsn: str, redis_url: str, queue_name: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KYU_")}
    return {**base, "KYU_DSN": pg_dsn, "KYU_REDIS_URL": redis_url, "KYU_QUEUE": queue_name,
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


class Run:
    """One ``kyu-trio worker`` subprocess; its output goes to files (nothing to drain)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
        self.err = tmp_path / f"err-{uuid.uuid4().hex[:6]}"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kyu_trio", "worker", *args],
                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )  # fmt: skip

    def wait(self, limit: float = 30.0) -> tuple[int, str]:
        code = self.proc.wait(timeout=limit)
        return code, self.err.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            for pid in children_of(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def run(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(*args: str, **extra_env: str) -> Run:
        runs.append(Run(tmp_path, {**env, **extra_env}, *args))
        return runs[-1]

    yield start
    for r in runs:
        r.stop()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def until(check: Callable[[], object], limit: float = 30.0, what: str = "") -> None:
    """Poll: another process's progress has no event to wait on."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def wait_ready(port: int, run: Run) -> None:
    def ready() -> bool:
        assert run.proc.poll() is None, run.err.read_text()
        return get(port, "/readyz")[0] == 200

    until(ready, what="every worker process ready")


def rows(pg_dsn: str, queue: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(
            "SELECT id::text, status, locked_by FROM kyu_jobs WHERE queue = %s", (queue,)
        ).fetchall()


def statuses(pg_dsn: str, queue: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, status, _ in rows(pg_dsn, queue):
        counts[status] = counts.get(status, 0) + 1
    return counts


def enqueue(make_config: Callable[..., Config], *payloads: str, timeout: float = 2.0) -> list[str]:
    """Jobs of 2 s timeout by default: the reaper may rescue one 2 s after its worker was
    lost."""

    async def body() -> list[str]:
        async with Queue(make_config(default_job_timeout=timeout)) as queue:
            return await queue.enqueue_many([("sleep", p) for p in payloads])

    return trio.run(body)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


# ---- tests ------------------------------------------------------------------------------------


def test_two_processes_share_jobs_merge_metrics_and_stop_cleanly_on_sigterm(
    run: Callable[..., Run], app: str, pg_dsn: str, queue_name: str,
    make_config: Callable[..., Config],
) -> None:  # fmt: skip
    port = free_port()
    supervisor = run(app, "--processes", "2", "--metrics-port", str(port))
    wait_ready(port, supervisor)
    # 4 workers per process: 16 jobs of 0.3 s cannot all go to one process.
    enqueue(make_config, *["0.3"] * 16)
    until(lambda: statuses(pg_dsn, queue_name) == {"completed": 16}, what="16 completed")
    workers = {locked_by for _, _, locked_by in rows(pg_dsn, queue_name)}
    assert len(workers) == 2, workers

    status, text = get(port, "/metrics")
    assert status == 200
    completed = samples(text, "kyu_jobs_processed_total")
    by_process = {
        dict(labels)["process"]: value
        for labels, value in completed.items()
        if dict(labels)["status"] == "completed"
    }
    assert set(by_process) == {"0", "1"} and all(by_process.values()), by_process
    assert sum(by_process.values()) == 16
    assert samples(text, "kyu_process_up") == {
        (("process", "0"),): 1.0, (("process", "1"),): 1.0,
    }  # fmt: skip
    assert text.count("# TYPE kyu_jobs_processed_total counter") == 1

    # Jobs running when SIGTERM arrives finish (grace 5 s); then every process exits 0.
    enqueue(make_config, *["1.0"] * 6)
    until(lambda: statuses(pg_dsn, queue_name).get("running") == 6, what="6 running")
    supervisor.proc.send_signal(signal.SIGTERM)
    code, err = supervisor.wait()
    assert code == 0, err
    assert statuses(pg_dsn, queue_name) == {"completed": 22}
    assert not error_lines(err) and "Traceback" not in err, err
    assert err.count("finishing running jobs") == 2  # each child got the signal once


def test_a_killed_worker_process_is_restarted_and_a_second_signal_requeues_at_once(
    run: Callable[..., Run], app: str, pg_dsn: str, queue_name: str,
    make_config: Callable[..., Config],
) -> None:  # fmt: skip
    port = free_port()
    supervisor = run(app, "--processes", "2", "--metrics-port", str(port))
    wait_ready(port, supervisor)
    before = set(children_of(supervisor.proc.pid))
    enqueue(make_config, *["0.5"] * 8)
    until(lambda: statuses(pg_dsn, queue_name).get("running") == 8, what="8 running")
    holders = {w for _, status, w in rows(pg_dsn, queue_name) if status == "running" and w}
    victim = int(sorted(holders)[0].split(":")[1])  # worker ids are host:pid:random
    os.kill(victim, signal.SIGKILL)
    # The reaper of a live process rescues the killed one's jobs: stale after 2 s, and
    # past their 2 s timeout.
    until(lambda: statuses(pg_dsn, queue_name) == {"completed": 8}, what="8 completed")
    wait_ready(port, supervisor)
    after = set(children_of(supervisor.proc.pid))
    assert len(after) == 2 and victim not in after and len(after & before) == 1
    restarts = samples(get(port, "/metrics")[1], "kyu_process_restarts_total")
    assert sorted(restarts.values()) == [0.0, 1.0]

    # The second signal is passed on too: running jobs go back to pending at once.
    [long_job] = enqueue(make_config, "30", timeout=60.0)
    until(lambda: statuses(pg_dsn, queue_name).get("running") == 1, what="1 running")
    started = time.monotonic()
    supervisor.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    supervisor.proc.send_signal(signal.SIGTERM)
    code, err = supervisor.wait()
    assert code == 0, err
    assert time.monotonic() - started < 4.0  # not after the 5 s grace: requeued at once
    assert "killed by SIGKILL" in err and "restarting it in" in err
    assert [s for i, s, _ in rows(pg_dsn, queue_name) if i == long_job] == ["pending"]
    assert not error_lines(err), err


def test_a_supervisor_that_dies_takes_its_worker_processes_with_it(
    run: Callable[..., Run], app: str,
) -> None:  # fmt: skip
    port = free_port()
    supervisor = run(app, "--processes", "2", "--metrics-port", str(port))
    wait_ready(port, supervisor)
    children = children_of(supervisor.proc.pid)
    assert len(children) == 2
    supervisor.proc.kill()
    supervisor.proc.wait()

    def gone() -> bool:
        for pid in children:
            try:
                state = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if state[state.rindex(")") + 2] != "Z":
                return False
        return True

    until(gone, limit=15, what="the orphaned worker processes to stop")


def test_a_worker_process_failing_at_start_up_fails_the_supervisor_at_once(
    run: Callable[..., Run], app: str,
) -> None:  # fmt: skip
    started = time.monotonic()
    supervisor = run(app, "--processes", "2", "--metrics-port", "0",
                     KYU_DSN=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")  # fmt: skip
    code, err = supervisor.wait()
    assert code == 1, err
    assert time.monotonic() - started < 20
    [line] = error_lines(err)
    assert "failed at start-up" in line and "unreachable" in line, line
    assert "Traceback" not in err and "restarting" not in err, err


def test_an_app_failing_at_import_is_one_error_line(
    run: Callable[..., Run], tmp_path: Path,
) -> None:  # fmt: skip
    name = f"kyu_procs_bad_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('no config file')\n")
    started = time.monotonic()
    code, err = run(f"{name}:queue", "--processes", "2").wait()
    assert code == 1
    assert time.monotonic() - started < 15
    assert err.splitlines() == [
        f"error: importing {name!r} failed: RuntimeError: no config file"
    ], err


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_taken_metrics_port_is_one_error_line(
    run: Callable[..., Run], app: str, processes: str,
) -> None:  # fmt: skip
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        by_option = run(app, "--processes", processes, "--metrics-port", port).wait()
        by_env = run(app, "--processes", processes, KYU_METRICS_PORT=port).wait()
    for code, err in (by_option, by_env):
        assert code == 1, err
        [line] = error_lines(err)
        assert f"metrics port {port} on 127.0.0.1 is already in use" in line, err


# ---- the supervisor's restart policy, with stand-in children ------------------------------

# Reports ready on the link the supervisor gave it, then exits 3: a child that keeps dying.
FLAKY_CHILD = textwrap.dedent(f"""
    import json, os, socket, sys
    link = socket.socket(fileno=json.loads(os.environ[{CHILD_ENV!r}])["fd"])
    link.sendall(b"ready 0\\n")
    link.sendall(b"error handler crashed\\n")
    sys.exit(3)
""")


async def test_a_worker_process_that_keeps_dying_fails_the_supervisor() -> None:
    supervisor = Supervisor(
        command=[sys.executable, "-c", FLAKY_CHILD], processes=2, overrides={},
        metrics_host="127.0.0.1", metrics_port=0, logger=Config().logger,
        first_backoff=0.01, max_failures=3,
    )  # fmt: skip
    with trio.fail_after(20):
        failure = await supervisor.main()
    assert failure is not None
    assert "exited 3 times within 60s" in failure, failure
    assert "(exit status 3): handler crashed" in failure, failure
    assert max(child.restarts for child in supervisor.children) == 2
