"""Several queues in one process, against real servers: `serve_queues` in code, and
``kyu-trio worker APP APP`` with and without ``--processes``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
import trio
from prometheus_client.parser import text_string_to_metric_families

from kyu_trio import Config, JobStatus, Queue, serve_queues
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def other_redis_db(url: str) -> str:
    """The same Redis server, another database: a second Redis as far as a queue knows."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 1) % 16}"))


@pytest.fixture
def names(queue_name: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """Two queues of this test's own; their Redis keys (in both databases) go afterwards."""
    a, b = f"{queue_name}:a", f"{queue_name}:b"
    yield a, b
    for url in (redis_url, other_redis_db(redis_url)):
        client = redis.Redis.from_url(url)
        try:
            client.delete(*(key for name in (a, b) for key in (name, f"{name}:~epoch")))
        finally:
            client.close()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def connections_named(dsn: str, application_name: str) -> int:
    with psycopg.connect(dsn) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        row = conn.execute(query, (application_name,)).fetchone()
    return 0 if row is None else int(row[0])


async def test_two_queues_on_different_servers_share_one_process_and_one_endpoint(
    make_config: Callable[..., Config], names: tuple[str, str], pg_dsn: str, redis_url: str
) -> None:
    port = free_port()
    # b has a PostgreSQL pool of its own (another DSN) and another Redis database.
    other_dsn = psycopg.conninfo.make_conninfo(pg_dsn, application_name="kyu_b")
    a = Queue(make_config(queue_name=names[0], workers=2, metrics_sample_interval=0.1))
    b = Queue(
        make_config(
            queue_name=names[1],
            dsn=other_dsn,
            redis_url=other_redis_db(redis_url),
            workers=3,
            metrics_sample_interval=0.1,
        )
    )
    ran = {"a": 0, "b": 0}
    done = trio.Event()

    def record(name: str) -> None:
        ran[name] += 1
        if ran == {"a": 6, "b": 4}:
            done.set()

    @a.handler("t")
    async def in_a(payload: str) -> None:
        record("a")

    @b.handler("t")
    async def in_b(payload: str) -> None:
        record("b")

    async with a, b:
        ids = await a.enqueue_many([("t", str(i)) for i in range(6)])
        ids += await b.enqueue_many([("t", str(i)) for i in range(4)])
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_queues, a, b, metrics_port=port))
            with trio.fail_after(20):
                await done.wait()
                while True:  # outcomes are recorded, then sampled, shortly after
                    _, text = await trio.to_thread.run_sync(get, port, "/metrics")
                    if (
                        samples(text, "kyu_jobs_by_status").get(
                            (("queue", names[1]), ("status", "completed"))
                        )
                        == 4
                        and samples(text, "kyu_jobs_by_status").get(
                            (("queue", names[0]), ("status", "completed"))
                        )
                        == 6
                    ):
                        break
                    await trio.sleep(0.1)
            ready = await trio.to_thread.run_sync(get, port, "/readyz")
            health = await trio.to_thread.run_sync(get, port, "/healthz")
            assert a.metrics_port is None and b.metrics_port is None  # no endpoint of their own
            of_b = await trio.to_thread.run_sync(connections_named, pg_dsn, "kyu_b")
            a.shutdown()
        jobs = [await a.inspect(i) for i in ids]
    assert {j.status for j in jobs} == {JobStatus.COMPLETED}
    assert ready == (200, "ready\n") and health == (200, "ok\n")
    completed = {
        dict(labels)["queue"]: value
        for labels, value in samples(text, "kyu_jobs_processed_total").items()
        if dict(labels)["status"] == "completed"
    }
    assert completed == {names[0]: 6, names[1]: 4}
    assert samples(text, "kyu_leader") == {(("queue", names[0]),): 1, (("queue", names[1]),): 1}
    assert text.count("# TYPE kyu_jobs_processed_total counter") == 1
    assert len(samples(text, "process_resident_memory_bytes")) == 1
    assert of_b > 0  # b served through its own DSN


# ---- the command line ---------------------------------------------------------------------

APP = """
import os
import trio
from kyu_trio import Config, Queue

base = os.environ["KYU_QUEUE"]
emails = Queue(Config.from_env(queue_name=base + ":emails", workers=4, shutdown_grace=10.0))
reports = Queue(Config.from_env(queue_name=base + ":reports", workers=2, shutdown_grace=10.0))


@emails.handler("sleep")
async def send(payload: str) -> None:
    await trio.sleep(float(payload))


@reports.handler("sleep")
async def build(payload: str) -> None:
    await trio.sleep(float(payload))
"""


@pytest.fixture
def app(tmp_path: Path, queue_name: str, redis_url: str) -> Iterator[str]:
    """A module with two queues (``:emails`` and ``:reports``); returns its name."""
    name = f"kyu_two_queues_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP)
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        for q in (f"{queue_name}:emails", f"{queue_name}:reports"):
            client.delete(q, f"{q}:~epoch")
    finally:
        client.close()


@pytest.fixture
def worker(
    tmp_path: Path, pg_dsn: str, redis_url: str, queue_name: str
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYU_")}
    env |= {"KYU_DSN": pg_dsn, "KYU_REDIS_URL": redis_url, "KYU_QUEUE": queue_name}
    env["PYTHONUNBUFFERED"] = "1"
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        err = (tmp_path / f"err-{len(procs)}").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "kyu_trio", "worker", *args],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        )
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stderr_of(tmp_path: Path, index: int = 0) -> str:
    return (tmp_path / f"err-{index}").read_text()


def until(check: Callable[[], object], what: str, limit: float = 30.0) -> None:
    """Poll: another process's progress has no event to wait on."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def statuses(pg_dsn: str, queue: str) -> dict[str, int]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM kyu_jobs WHERE queue = %s GROUP BY status", (queue,)
        ).fetchall()
    return dict(rows)


def enqueue(config: Config, *payloads: str) -> None:
    async def body() -> None:
        async with Queue(config) as queue:
            await queue.enqueue_many([("sleep", p) for p in payloads])

    trio.run(body)


def test_worker_serves_two_apps_in_one_process_and_stops_both_on_sigterm(
    worker: Callable[..., subprocess.Popen[bytes]], app: str, tmp_path: Path, pg_dsn: str,
    queue_name: str, make_config: Callable[..., Config],
) -> None:  # fmt: skip
    port = free_port()
    proc = worker(f"{app}:emails", f"{app}:reports", "--metrics-port", str(port))
    emails, reports = f"{queue_name}:emails", f"{queue_name}:reports"

    def ready() -> bool:
        assert proc.poll() is None, stderr_of(tmp_path)
        return get(port, "/readyz")[0] == 200

    until(ready, "the worker to be ready")
    enqueue(make_config(queue_name=emails), *["0.1"] * 8)
    enqueue(make_config(queue_name=reports), *["0.1"] * 4)
    until(
        lambda: (
            statuses(pg_dsn, emails) == {"completed": 8}
            and statuses(pg_dsn, reports) == {"completed": 4}
        ),
        "every job of both queues",
    )
    text = get(port, "/metrics")[1]
    completed = {
        dict(labels)["queue"]: value
        for labels, value in samples(text, "kyu_jobs_processed_total").items()
        if dict(labels)["status"] == "completed"
    }
    assert completed == {emails: 8, reports: 4}

    # SIGTERM: the jobs running in both queues finish (grace 10 s), then it exits 0.
    enqueue(make_config(queue_name=emails), "1.5", "1.5")
    enqueue(make_config(queue_name=reports), "1.5")
    until(
        lambda: (
            statuses(pg_dsn, emails).get("running") == 2
            and statuses(pg_dsn, reports).get("running") == 1
        ),
        "3 running",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, stderr_of(tmp_path)
    err = stderr_of(tmp_path)
    assert statuses(pg_dsn, emails) == {"completed": 10}
    assert statuses(pg_dsn, reports) == {"completed": 5}
    assert err.count("finishing running jobs") == 1, err  # one signal watcher
    assert f"serving 2 queues in this process: '{emails}', '{reports}'" in err
    assert "worker stopped" in err and "Traceback" not in err, err


def test_worker_processes_serve_two_apps_each(
    worker: Callable[..., subprocess.Popen[bytes]], app: str, tmp_path: Path, pg_dsn: str,
    queue_name: str, make_config: Callable[..., Config],
) -> None:  # fmt: skip
    port = free_port()
    proc = worker(
        f"{app}:emails", f"{app}:reports", "--processes", "2", "--metrics-port", str(port)
    )
    emails, reports = f"{queue_name}:emails", f"{queue_name}:reports"

    def ready() -> bool:
        assert proc.poll() is None, stderr_of(tmp_path)
        return get(port, "/readyz")[0] == 200

    until(ready, "both worker processes to be ready")
    # 4 workers per process for emails: 16 jobs of 0.3 s cannot all go to one process.
    enqueue(make_config(queue_name=emails), *["0.3"] * 16)
    enqueue(make_config(queue_name=reports), *["0.3"] * 8)
    until(
        lambda: (
            statuses(pg_dsn, emails) == {"completed": 16}
            and statuses(pg_dsn, reports) == {"completed": 8}
        ),
        "every job of both queues",
    )
    text = get(port, "/metrics")[1]
    completed: dict[tuple[str, str], float] = {}
    for labels, value in samples(text, "kyu_jobs_processed_total").items():
        label = dict(labels)
        if label["status"] == "completed":
            completed[(label["queue"], label["process"])] = value
    assert {q for q, _ in completed} == {emails, reports}
    assert {p for _, p in completed} == {"0", "1"}
    assert sum(v for (q, _), v in completed.items() if q == emails) == 16
    assert sum(v for (q, _), v in completed.items() if q == reports) == 8
    assert samples(text, "kyu_process_up") == {(("process", "0"),): 1, (("process", "1"),): 1}

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, stderr_of(tmp_path)
    err = stderr_of(tmp_path)
    assert err.count("finishing running jobs") == 2, err  # once per worker process
    assert "error:" not in err and "Traceback" not in err, err


def test_worker_refuses_apps_it_cannot_serve_together(
    worker: Callable[..., subprocess.Popen[bytes]], app: str, tmp_path: Path
) -> None:
    cases = [
        ((f"{app}:emails", f"{app}:reports", "--queue", "x"), 2, "--queue names one queue"),
        ((f"{app}:emails", f"{app}:emails"), 1, "is given twice"),
        ((f"{app}:emails", f"{app}:emails", "--processes", "2"), 1, "is given twice"),
    ]
    procs = [worker(*args) for args, _, _ in cases]
    for i, ((_, code, fragment), proc) in enumerate(zip(cases, procs, strict=True)):
        assert proc.wait(timeout=30) == code
        lines = stderr_of(tmp_path, i).splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_several_queues_example_runs(pg_dsn: str, redis_url: str, queue_name: str) -> None:
    env = {**os.environ, "KYU_DSN": pg_dsn, "KYU_REDIS_URL": redis_url}
    env |= {"KYU_QUEUE": queue_name, "KYU_METRICS_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "several_queues.py")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "OK: both queues served by one process" in result.stdout
    client = redis.Redis.from_url(redis_url)
    try:
        for q in (f"{queue_name}:emails", f"{queue_name}:reports"):
            client.delete(q, f"{q}:~epoch")
    finally:
        client.close()
