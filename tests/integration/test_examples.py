"""Every example runs to completion against the real servers (the README's and the
tutorial's included), and the README's commands work from a clean clone.

The examples run as subprocesses with KYU_DSN / KYU_REDIS_URL from the fixtures and a
queue of the test's own (KYU_QUEUE). The clone tests `git clone` this repository (its
committed HEAD) into a temporary directory and give the clone a venv of its own that
reuses this venv's installed packages through a ``.pth`` file, so nothing is downloaded:
the only step skipped is the network install (``pip install``), which the clone's
``.venv/.kyu-setup-stamp`` tells ``scripts/setup.sh`` is already done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kyu_trio import _dev
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def env(pg_dsn: str, redis_url: str, queue_name: str) -> dict[str, str]:
    """The environment of an example: the test's servers and queue, UTF-8 output."""
    return {
        **os.environ,
        "KYU_DSN": pg_dsn,
        "KYU_REDIS_URL": redis_url,
        "KYU_QUEUE": queue_name,
        "PYTHONIOENCODING": "utf-8",
    }


def run(
    argv: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


# ---- the examples ---------------------------------------------------------------------


def test_quickstart_runs_to_completion(env: dict[str, str]) -> None:
    out = succeeded(run([sys.executable, str(EXAMPLES / "quickstart.py")], env))
    for status in ("completed", "dead"):
        assert status in out
    assert "OK: every job ended as expected" in out


def test_web_enqueue_self_test(env: dict[str, str]) -> None:
    """--self-test: POST /jobs over a raw TCP client, workers in the app's own nursery,
    GET /jobs/<id> until completed."""
    out = succeeded(run([sys.executable, str(EXAMPLES / "web_enqueue.py"), "--self-test"], env))
    assert re.search(r'^POST /jobs .* -> 201 \{"id": "[0-9a-f-]{36}"\}$', out, re.M), out
    assert "POST /jobs with a bad body -> 400; GET /jobs/<unknown id> -> 404" in out
    assert '"status": "completed"' in out and '"priority": 5' in out
    assert "OK: a job enqueued over HTTP was completed" in out


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, object]:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def web_app(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """examples/web_enqueue.py serving HTTP (no workers) on a free port, as a process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "web_enqueue.py"), "--host", "127.0.0.1"],
        cwd=ROOT,
        env={**env, "KYU_WEB_PORT": str(port)},
        text=True,
        encoding="utf-8",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the web app did not start listening"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_web_enqueue_serves_http_and_stops_on_sigterm(
    web_app: tuple[str, subprocess.Popen[str]], env: dict[str, str]
) -> None:
    """Without --serve-workers the app only enqueues: the job stays pending."""
    base, proc = web_app
    body = json.dumps({"type": "send_email", "payload": {"to": "a@b.c"}}).encode()
    status, answer = _http("POST", f"{base}/jobs", body)
    assert status == 201, answer
    assert isinstance(answer, dict)
    job_id = answer["id"]

    status, job = _http("GET", f"{base}/jobs/{job_id}")
    assert status == 200 and isinstance(job, dict)
    assert (job["id"], job["status"], job["payload"], job["queue"]) == (
        job_id,
        "pending",
        '{"to": "a@b.c"}',
        env["KYU_QUEUE"],
    )

    assert _http("POST", f"{base}/jobs", b'{"type": "x", "priority": 99999}')[0] == 400
    assert _http("POST", f"{base}/jobs", b"[]")[0] == 400
    assert _http("GET", f"{base}/jobs/not-a-uuid")[0] == 404
    assert _http("GET", f"{base}/nowhere")[0] == 404
    assert _http("GET", f"{base}/jobs")[0] == 405

    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "SIGTERM: stopping" in out


def test_sync_and_asyncio_handlers(env: dict[str, str]) -> None:
    out = succeeded(run([sys.executable, str(EXAMPLES / "sync_and_asyncio_handlers.py")], env))
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    checksum = json.loads(lines["checksum"].split(None, 2)[2])
    probe = json.loads(lines["probe"].split(None, 2)[2])
    assert lines["checksum"].split()[1] == "completed"
    assert lines["probe"].split()[1] == "completed"
    assert checksum["in_main_thread"] is False and len(checksum["sha256"]) == 64
    assert probe["redis"] == "+PONG" and probe["postgres"].startswith(("S", "N"))
    assert "OK: the thread handler and the asyncio handler both completed" in out


def test_run_once_cron(env: dict[str, str]) -> None:
    """--seed 5: five jobs, one fails once; the next run (after its 1 s backoff) retries it."""
    script = str(EXAMPLES / "run_once_cron.py")
    first = succeeded(run([sys.executable, script, "--seed", "5"], env)).strip()
    assert re.fullmatch(
        r"run_once_cron: 5 runs \(4 completed, 1 failed\) in \d+\.\ds; "
        r"pending 5→0, failed 0→1, completed 0→4",
        first,
    ), first

    time.sleep(1.5)
    second = succeeded(run([sys.executable, script], env)).strip()
    assert re.fullmatch(
        r"run_once_cron: 1 run \(1 completed\) in \d+\.\ds; failed 1→0, completed 4→5", second
    ), second

    third = succeeded(run([sys.executable, script], env)).strip()
    assert re.fullmatch(r"run_once_cron: 0 runs in \d+\.\ds; completed 5", third), third


def test_run_once_cron_unreachable_server(env: dict[str, str]) -> None:
    port = free_port()  # nothing listens there
    result = run(
        [sys.executable, str(EXAMPLES / "run_once_cron.py")],
        {**env, "KYU_DSN": f"postgresql://postgres@127.0.0.1:{port}/x"},
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("run_once_cron: error: PostgreSQL at ") and f":{port}" in last


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> list[str]:
    """Lines of proc's output up to the first that holds needle (fails if it exits or
    the timeout passes first)."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    proc.kill()
    rest = proc.communicate()[0]
    pytest.fail(f"never printed {needle!r}: {''.join(seen)}{rest}")


def test_hello_serves_its_job_until_sigint(env: dict[str, str]) -> None:
    """examples/hello.py (the README's example, the tutorial's step 2): the job it
    enqueues is served, and Ctrl-C (SIGINT) stops serve() cleanly."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "hello.py")],
        cwd=ROOT,
        env={**env, "KYU_METRICS_PORT": "0"},
        text=True,
        encoding="utf-8",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        seen = _wait_for_line(proc, "mail to ada@example.com")
        assert re.search(r"^job [0-9a-f-]{36}, try 1: mail to ada@example\.com$", seen[-1])
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tutorial_worker_and_command_line(env: dict[str, str]) -> None:
    """The tutorial's step 3: `kyu-trio worker hello:queue` from examples/, and
    `kyu-trio enqueue` / `inspect` from elsewhere."""
    env = {**env, "KYU_METRICS_PORT": "0"}
    kyu = [sys.executable, "-m", "kyu_trio"]
    worker = subprocess.Popen(
        [*kyu, "worker", "hello:queue"],
        cwd=EXAMPLES,
        env=env,
        text=True,
        encoding="utf-8",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_line(worker, "serving queue")
        job_id = succeeded(run([*kyu, "enqueue", "send_email", "grace@example.com"], env)).strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", job_id), job_id
        seen = _wait_for_line(worker, "mail to grace@example.com")
        assert job_id in seen[-1]
        deadline = time.monotonic() + 30
        while True:  # the outcome is written by the completer right after the handler
            job = json.loads(succeeded(run([*kyu, "inspect", job_id, "--json"], env)))
            if job["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert job["status"] == "completed", job
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
        assert worker.returncode == 0, out
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_api_tour(env: dict[str, str]) -> None:
    """examples/api_tour.py, shown region by region in docs/how-to/use-the-api.md."""
    out = succeeded(run([sys.executable, str(EXAMPLES / "api_tour.py")], env))
    assert "dead: boom: RuntimeError: cannot process 'payload-42'" in out
    assert "OK: the tour ran" in out


def test_json_logging(env: dict[str, str]) -> None:
    """examples/json_logging.py: one JSON object per job event, with the extra= fields."""
    out = succeeded(run([sys.executable, str(EXAMPLES / "json_logging.py")], env))
    events = [json.loads(line) for line in out.splitlines()]
    by_event = {(e.get("kyu_event"), e.get("job_type")): e for e in events}
    completed = by_event[("completed", "ok")]
    assert completed["level"] == "DEBUG" and completed["attempt"] == 1
    assert isinstance(completed["duration"], float)
    dead = by_event[("dead", "boom")]
    assert dead["level"] == "ERROR" and dead["error"] == "ValueError: bad input"
    assert re.fullmatch(r"[0-9a-f-]{36}", dead["job_id"])


# ---- the README's commands from a clean clone ---------------------------------------------


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh `git clone` of this repository, with a venv of its own whose Python imports
    the clone's kyu_trio and this venv's installed packages (no download)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of kyu-trio to clone")
    target = tmp_path / "kyu-trio"
    subprocess.run(
        ["git", "clone", "--quiet", str(ROOT), str(target)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    venv = target / ".venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    packages = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Directory lines of a .pth go on sys.path (the .pth files inside them are not run,
    # so this venv's editable install of /work/main's kyu_trio is not picked up).
    lines = [str(target), *site.getsitepackages()]
    Path(packages, "kyu-trio-clone.pth").write_text("\n".join(lines) + "\n")
    for tool in ("ruff", "mypy", "pytest", "sphinx-build"):  # what the scripts run
        here = Path(sys.prefix, "bin", tool)
        if here.exists():
            (venv / "bin" / tool).symlink_to(here)
    # What setup.sh writes after `pip install -e '.[dev]'`: the install is skipped.
    digest = subprocess.run(
        ["sha256sum", "pyproject.toml"], cwd=target, check=True, capture_output=True, text=True
    ).stdout.split()[0]
    (venv / ".kyu-setup-stamp").write_text(digest + "\n")
    return target


def test_clone_imports_its_own_package_and_scripts_parse(clone: Path) -> None:
    where = run(
        [
            str(clone / ".venv" / "bin" / "python"),
            "-c",
            "import kyu_trio; print(kyu_trio.__file__)",
        ],
        {k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd=clone.parent,  # not the clone: the venv's .pth must find it
    )
    assert Path(succeeded(where).strip()) == clone / "kyu_trio" / "__init__.py"
    scripts = sorted((clone / "scripts").glob("*.sh"))
    assert {s.name for s in scripts} >= {"setup.sh", "quickstart.sh", "test.sh"}
    for script in scripts:
        result = run(["bash", "-n", str(script)], dict(os.environ), cwd=clone)
        assert result.returncode == 0, (script, result.stderr)


def test_quickstart_example_in_clean_clone(clone: Path, env: dict[str, str]) -> None:
    python = str(clone / ".venv" / "bin" / "python")
    out = succeeded(run([python, "examples/quickstart.py"], env, cwd=clone))
    assert "OK: every job ended as expected" in out


def _without_server_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("KYU_DSN", "KYU_REDIS_URL", "KYU_QUEUE")}


def test_quickstart_sh_in_clean_clone(clone: Path, env: dict[str, str]) -> None:
    """The README's first command, ./scripts/quickstart.sh, on the test's servers (given
    through KYU_DSN/KYU_REDIS_URL, so setup.sh only checks them)."""
    if shutil.which("prometheus") is None and not Path("/usr/bin/prometheus").exists():
        pytest.skip("setup.sh would apt-get install prometheus (network)")
    result = run(["./scripts/quickstart.sh"], env, cwd=clone, timeout=300)
    out = succeeded(result)
    assert "setup: done" in out
    assert "OK: every job ended as expected" in out


@pytest.mark.skipif(
    _dev.find_postgres_bin() is None or _dev.find_redis_server() is None,
    reason="kyu-trio dev needs the PostgreSQL and Redis binaries",
)
def test_quickstart_sh_dev_fallback_in_clean_clone(clone: Path, env: dict[str, str]) -> None:
    """./scripts/quickstart.sh on throwaway `kyu-trio dev` servers, as on a machine where
    setup.sh cannot install servers (forced here with KYU_QUICKSTART=dev)."""
    result = run(
        ["./scripts/quickstart.sh"],
        {**_without_server_env(env), "KYU_QUICKSTART": "dev"},
        cwd=clone,
        timeout=300,
    )
    out = succeeded(result)
    assert "OK: every job ended as expected" in out
    assert "quickstart: throwaway servers of kyu-trio dev (KYU_QUICKSTART=dev)" in result.stderr
    found = re.search(r"export KYU_DSN=\S+ KYU_REDIS_URL=\S+", result.stderr)
    assert found is not None and ":5432/" not in found.group(0), result.stderr
    data_dir = re.search(r"data in (\S+)", result.stderr)
    assert data_dir is not None and not Path(data_dir.group(1)).exists()  # torn down


def test_test_sh_in_clean_clone(clone: Path, env: dict[str, str]) -> None:
    """The README's second command, ./scripts/test.sh (setup, ruff, mypy, the docs build,
    pytest), run on the clone's unit tests (the whole suite runs here already)."""
    if shutil.which("prometheus") is None and not Path("/usr/bin/prometheus").exists():
        pytest.skip("setup.sh would apt-get install prometheus (network)")
    for tool in ("ruff", "mypy", "pytest", "sphinx-build"):
        if not (clone / ".venv" / "bin" / tool).exists():
            pytest.skip(f"{tool} is not installed in this venv")
    result = run(
        ["./scripts/test.sh", "tests/unit", "-q", "-p", "no:cacheprovider"],
        {**env, "MYPY_CACHE_DIR": str(clone / ".mypy_cache")},
        cwd=clone,
        timeout=600,
    )
    out = succeeded(result)
    assert "test: ruff check ." in out and "test: mypy" in out and "test: docs" in out
    assert re.search(r"\d+ passed", out), out
