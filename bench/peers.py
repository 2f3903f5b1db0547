"""Peers: the throughput workload of bench/throughput.py run, in one invocation and on the same
servers, through kyu-trio and the Python job queues users would pick instead.

    .venv/bin/python -m bench.peers --jobs 20000 --processes 2

For every system, the same three figures:

- single enqueue jobs/s: ``--single`` no-op jobs enqueued one by one, each call returning
  before the next, into a queue no worker serves (kyu-trio: ``<queue>-single``);
- bulk enqueue jobs/s: ``--jobs`` no-op jobs enqueued through the system's bulk API in batches
  of 1,000, or "n/a" where it has none (the queue is then filled one job at a time, untimed);
- processed jobs/s: ``--jobs`` / the wall time from starting ``--processes`` worker processes
  until every job has run (worker start-up included, as in bench/_common.run_workers).

kyu-trio runs through bench/throughput.enqueue_figures and bench/_common.run_workers, exactly
as bench/throughput.py runs it. Each peer is installed from PyPI into its own virtualenv
(bench/.venvs/<peer>, rebuilt only when the pins in PEERS change) and driven by the small
apps in bench/_peers/. Its no-op job does one Redis INCR on a key unique to the run, in the
peer's own Redis database; this process polls that counter every 50 ms to see completion.
That INCR is one Redis round trip per job the peers pay and kyu-trio's no-op handler does
not (kyu-trio's completion is read from its jobs table instead).

Defaults: kyu-trio and pgqueuer (the fastest peer) also run side by side with nothing tuned,
each at its own defaults (kyu-trio: every Config default; pgqueuer: ``pgqueuer.run(main)``),
both on the peers' job (one Redis INCR), in the same rounds: the figure kyu-trio's defaults
are chosen by. ``--defaults-only`` runs only that pair:

    .venv/bin/python -m bench.peers --defaults-only --jobs 20000 --processes 2 --repeat 3

Each peer gets its own Redis database number (REDIS_DBS) and, if PostgreSQL-backed, its own
PostgreSQL database ``kyu_peer_<name>``, created before and dropped after its run; every worker
process is started in its own session and its whole process tree is terminated at the end.
A peer that fails to install or run is recorded as "failed: <reason>" and the run goes on.

Results: bench/results/peers.md, peers.json and peers.png (matplotlib, from
bench/requirements.txt; installed into this interpreter's environment only if not importable);
with ``--defaults-only``, bench/results/peers-defaults.md and peers-defaults.json instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import redis
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ._common import (
    DSN,
    REDIS_URL,
    RESULTS,
    ROOT,
    ServerCpu,
    machine,
    new_queue_name,
    run_workers,
    write_results,
)
from .clients import asyncio_single, client_single, transactional_single
from .throughput import (
    bulk_enqueue_floor,
    cleanup,
    enqueue_figures,
    single_enqueue_floor,
    single_insert_floor,
)

BENCH = ROOT / "bench"
VENVS = BENCH / ".venvs"
APPS = BENCH / "_peers"
DRIVER = APPS / "_driver.py"
REQUIREMENTS = BENCH / "requirements.txt"
PINS_FILE = ".kyu-peer-pins.json"
BATCH = 1000  # bulk enqueue batch size, the same as enqueue_figures'
POLL_S = 0.05  # the same polling period as run_workers'
STOP_GRACE_S = 5.0
REDIS_MARKER = "kyu-peer-bench:owner"
CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class Ctx:
    """What a peer's worker command line is built from."""

    bin: Path  # the peer virtualenv's bin/
    index: int  # which of the --processes worker processes
    redis_url: str
    workers: int  # --workers: asyncio concurrency per process
    pool: int  # process-pool size per worker process: the cores / --processes, at least 1


@dataclass(frozen=True)
class Peer:
    name: str
    app: str  # module in bench/_peers/
    store: str  # where jobs are stored: "PostgreSQL" or "Redis"
    pins: tuple[str, ...]  # pip requirements, exact versions tested
    command: Callable[[Ctx], list[str]]  # one worker process
    config: Callable[[argparse.Namespace], str]  # how it is configured, for the summary
    bulk: str  # the bulk enqueue API used, or why there is none
    env: Callable[[Ctx], dict[str, str]] = lambda ctx: {}


def _pool(args: argparse.Namespace) -> int:
    return int(args.pool or max(1, CPUS // args.processes))


# Every peer runs its own worker CLI (or the function that CLI calls) with its documented
# defaults, except where its docs give throughput advice (celery's "Optimizing" guide) and
# for the knobs below, sized so that the --processes worker processes share the machine's
# cores:
# - asyncio peers (arq, saq, procrastinate, pgqueuer) get --workers concurrent jobs (pgqueuer:
#   batch size) per process, kyu-trio's workers per process, above their defaults (arq and saq
#   10, procrastinate 1, pgqueuer batch 10); on this I/O-bound no-op workload that favours them
#   (pgqueuer measured: batch 50 >= batch 10);
# - process-pool peers (celery, huey) get cores/--processes pool processes per worker process
#   (--pool overrides); dramatiq keeps its 8 threads, with one process per worker process;
# - per-job INFO logging is off everywhere (kyu-trio logs nothing per job at INFO either).
PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            name="rq",
            app="rq_app",
            store="Redis",
            pins=("rq==3.0.0", "redis==8.1.0"),
            # SimpleWorker, which rq ships for running jobs in the worker process: rq's default
            # Worker forks a work horse per job, which caps a no-op queue near 100 jobs/s
            # (issue 5 measured 94 forking vs 388 SimpleWorker).
            command=lambda c: [
                str(c.bin / "rq"),
                "worker",
                "--worker-class",
                "rq.worker.SimpleWorker",
                "--url",
                c.redis_url,
                "--logging_level",
                "WARNING",
                "bench",
            ],
            config=lambda a: "SimpleWorker (no fork per job), one job at a time per process",
            bulk="Queue.enqueue_many (one pipeline per batch)",
        ),
        Peer(
            name="arq",
            app="arq_app",
            store="Redis",
            pins=("arq==0.28.0", "redis==5.3.1", "hiredis==3.5.0"),
            command=lambda c: [str(c.bin / "python"), str(DRIVER), "arq_app", "worker"],
            config=lambda a: f"run_worker, max_jobs={a.workers} per process (default 10)",
            bulk="n/a (no bulk API)",
        ),
        Peer(
            name="saq",
            app="saq_app",
            store="Redis",
            # saq[redis] caps redis below 8; saq imports typing_extensions without declaring it.
            pins=("saq[redis]==0.26.4", "redis==7.4.1", "typing_extensions==4.16.0"),
            command=lambda c: [str(c.bin / "saq"), "saq_app.settings"],
            config=lambda a: f"saq CLI, concurrency={a.workers} per process (default 10)",
            bulk="n/a (Queue.map enqueues one by one)",
        ),
        Peer(
            name="procrastinate",
            app="procrastinate_app",
            store="PostgreSQL",
            pins=("procrastinate==3.10.0", "psycopg[binary]==3.3.9", "redis==8.1.0"),
            command=lambda c: [
                str(c.bin / "procrastinate"),
                "--app",
                "procrastinate_app.app",
                "--log-level",
                "warning",
                "worker",
                "--concurrency",
                str(c.workers),
                "--queues",
                "bench",
            ],
            config=lambda a: (
                f"psycopg connector, worker --concurrency {a.workers} per process (default 1),"
                " LISTEN/NOTIFY on"
            ),
            bulk="Task.batch_defer_async",
        ),
        Peer(
            name="pgqueuer",
            app="pgqueuer_app",
            store="PostgreSQL",
            pins=("pgqueuer==1.6.0", "asyncpg==0.32.0", "redis==8.1.0"),
            # pgqueuer.run(), what `pgq run` calls, on uvloop as `pgq run` does: the `pgq run`
            # CLI of 1.6.0 crashes before starting (its --log-level parser yields a str where
            # the logger setup wants an enum).
            command=lambda c: [str(c.bin / "python"), str(DRIVER), "pgqueuer_app", "worker"],
            config=lambda a: (
                f"asyncpg driver, pgqueuer.run(batch_size={a.workers}) per process (default 10),"
                " no concurrency cap (the default), uvloop"
            ),
            bulk="Queries.enqueue with lists",
        ),
        Peer(
            name="dramatiq",
            app="dramatiq_app",
            store="Redis",
            pins=("dramatiq[redis]==2.2.1", "redis==8.1.0"),
            command=lambda c: [
                str(c.bin / "dramatiq"),
                "dramatiq_app",
                "--processes",
                "1",
                "--threads",
                "8",
                "--queues",
                "bench",
            ],
            config=lambda a: (
                "RedisBroker, --processes 1 --threads 8 per process (the defaults"
                " are one process per core, 8 threads)"
            ),
            bulk="n/a (group() sends one by one)",
        ),
        Peer(
            name="celery",
            app="celery_app",
            store="Redis",
            pins=("celery[redis]==5.7.0", "redis==8.1.0"),
            command=lambda c: [
                str(c.bin / "celery"),
                "-A",
                "celery_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(c.pool),
                "--queues",
                "bench",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--hostname",
                f"peer{c.index}@%h",
            ],
            config=lambda a: (
                f"Redis broker, prefork --concurrency {_pool(a)} per process (default: one per"
                " core), prefetch multiplier 64, results ignored, rate limits off, acks_late"
                " off (default), no gossip/mingle"
            ),
            bulk="n/a (a group publishes one by one)",
        ),
        Peer(
            name="huey",
            app="huey_app",
            store="Redis",
            pins=("huey==3.5.4", "redis==8.1.0"),
            command=lambda c: [
                str(c.bin / "huey_consumer"),
                "huey_app.huey",
                "--worker-type",
                "process",
                "--workers",
                str(c.pool),
                "--quiet",
            ],
            config=lambda a: (
                f"RedisHuey (blocking dequeue), consumer -k process -w {_pool(a)} per process"
            ),
            bulk="n/a (no bulk API)",
        ),
    )
}

# Each peer's own Redis database; kyu-trio keeps the database of KYU_REDIS_URL (0 by default).
REDIS_DBS = {name: i for i, name in enumerate(PEERS, start=1)}


class PeerFailure(Exception):
    pass


# ---- virtualenvs -----------------------------------------------------------------------------


def ensure_venv(peer: Peer) -> Path:
    """bench/.venvs/<peer> with exactly ``peer.pins`` installed; reused when the pins match."""
    venv = VENVS / peer.name
    python = venv / "bin" / "python"
    wanted = {"pins": list(peer.pins), "python": sys.version.split()[0]}
    stamp = venv / PINS_FILE
    if python.exists() and stamp.exists():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return venv
        except ValueError:
            pass
    print(f"peers: {peer.name}: creating {venv.relative_to(ROOT)} with {' '.join(peer.pins)}")
    if venv.exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
    VENVS.mkdir(parents=True, exist_ok=True)
    _run_or_fail([sys.executable, "-m", "venv", str(venv)], "venv", timeout=300)
    _run_or_fail(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *peer.pins],
        "pip install",
        timeout=900,
    )
    stamp.write_text(json.dumps(wanted) + "\n")
    return venv


def _run_or_fail(cmd: list[str], what: str, timeout: float, **kwargs: Any) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise PeerFailure(f"{what} timed out after {timeout:.0f}s") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        raise PeerFailure(f"{what} exited {done.returncode}: {lines[-1][:300]}")
    return done.stdout


def freeze(venv: Path) -> list[str]:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout.split()


# ---- per-peer Redis database and PostgreSQL database -----------------------------------------


def redis_url_for(db: int) -> str:
    parts = urlsplit(REDIS_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def claim_redis_db(url: str) -> redis.Redis:
    """Empty the peer's Redis database, refusing one that holds keys this script did not put
    there (a database someone else uses)."""
    client = redis.Redis.from_url(url)
    if client.dbsize() and not client.exists(REDIS_MARKER):
        raise PeerFailure(f"Redis database {url} holds keys that are not this benchmark's")
    client.flushdb()
    client.set(REDIS_MARKER, "bench/peers.py")
    return client


def pg_url_for(dbname: str) -> str:
    """A postgresql:// URL (asyncpg takes no key=value strings) for ``dbname`` on DSN's server."""
    info = conninfo_to_dict(DSN)
    user = quote(str(info.get("user", "postgres")), safe="")
    password = info.get("password")
    auth = user + (":" + quote(str(password), safe="") if password else "")
    host = str(info.get("host", "127.0.0.1"))
    port = str(info.get("port", "5432"))
    return f"postgresql://{auth}@{host}:{port}/{dbname}"


def recreate_database(dbname: str, create: bool) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


# ---- processes -------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """pid -> (ppid, cpu seconds incl. reaped children, state) for every process."""
    table: dict[int, tuple[int, float, str]] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = sum(int(f) for f in fields[11:15]) / ticks
        table[int(entry.name)] = (int(fields[1]), cpu, fields[0])
    return table


def process_tree(roots: list[int]) -> dict[int, float]:
    """Every live process descending from ``roots`` (roots included) -> its CPU seconds."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, float] = {}
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _signal_all(procs: list[subprocess.Popen[bytes]], pids: set[int], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)  # each worker process leads its own session and group
    groups = {p.pid for p in procs}
    for pid in pids:  # anything in the tree that left those groups (signalled once only)
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) not in groups:
                os.kill(pid, sig)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every worker process tree, SIGKILL what is left after STOP_GRACE_S; return the
    pids still alive after that (there should be none)."""
    pids = set(process_tree([p.pid for p in procs]))
    _signal_all(procs, pids, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        for p in procs:
            p.poll()
        if not any(_alive(pid) for pid in pids):
            break
        time.sleep(0.1)
    pids |= set(process_tree([p.pid for p in procs]))
    _signal_all(procs, pids, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
    time.sleep(0.2)
    return sorted(pid for pid in pids if _alive(pid))


def peer_env(peer: Peer, venv: Path, ctx: Ctx, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(APPS),
        PYTHONUNBUFFERED="1",
        PEER_CONCURRENCY=str(ctx.workers),
    )
    env.update(extra)
    env.update(peer.env(ctx))
    return env


def burn_down(
    peer: Peer, venv: Path, args: argparse.Namespace, client: redis.Redis, extra: dict[str, str]
) -> dict[str, Any]:
    """Start the worker processes, wait until the counter reaches --jobs, stop them."""
    jobs, counter = args.jobs, extra["PEER_COUNTER_KEY"]
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    pg_cpu, redis_cpu = ServerCpu(("postgres",)), ServerCpu(("redis-server",))
    started = time.perf_counter()
    try:
        for i in range(args.processes):
            ctx = Ctx(venv / "bin", i, extra["PEER_REDIS_URL"], args.workers, _pool(args))
            log = open(RESULTS / f"peers-{peer.name}-{i}.log.tmp", "wb")  # noqa: SIM115
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    peer.command(ctx),
                    cwd=APPS,
                    env=peer_env(peer, venv, ctx, extra),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        done, last, last_change = 0, -1, time.perf_counter()
        while True:
            done = int(client.get(counter) or 0)
            now = time.perf_counter()
            if done >= jobs:
                break
            exited = [p.returncode for p in procs if p.poll() is not None]
            if exited:
                raise PeerFailure(
                    f"a worker process exited with {exited[0]} at {done}/{jobs} jobs "
                    f"(log: bench/results/peers-{peer.name}-*.log.tmp)"
                )
            if done != last:
                last, last_change = done, now
            elif now - last_change > args.stall:
                raise PeerFailure(f"no progress for {args.stall:.0f}s at {done}/{jobs} jobs")
            if now - started > args.timeout:
                raise PeerFailure(f"timed out after {args.timeout:.0f}s at {done}/{jobs} jobs")
            pg_cpu.sample()
            redis_cpu.sample()
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        worker_cpu = sum(process_tree([p.pid for p in procs]).values())
        pg_cpu.sample()
        redis_cpu.sample()
    finally:
        leftovers = stop_processes(procs)
        for log in logs:
            log.close()
        if leftovers:
            print(f"peers: {peer.name}: WARNING: processes still alive: {leftovers}")
    per_k = 1000 / jobs
    return {
        "seconds": elapsed,
        "jobs_per_s": jobs / elapsed,
        "jobs_counted": done,
        "worker_cpu_s_per_1k": worker_cpu * per_k,
        "postgres_cpu_s_per_1k": pg_cpu.seconds() * per_k,
        "redis_cpu_s_per_1k": redis_cpu.seconds() * per_k,
    }


def run_peer(peer: Peer, args: argparse.Namespace, defaults: bool = False) -> dict[str, Any]:
    """One run of one peer: install (or reuse) its venv, set up its own databases, enqueue,
    burn down, tear everything down. ``defaults``: its worker runs with its own defaults
    (PEER_DEFAULTS; only the apps that honour it: pgqueuer)."""
    started = time.perf_counter()
    venv = ensure_venv(peer)
    python = str(venv / "bin" / "python")
    url = redis_url_for(args.redis_db_base + REDIS_DBS[peer.name] - 1)
    dbname = f"kyu_peer_{peer.name}"
    extra = {
        "PEER_REDIS_URL": url,
        "PEER_COUNTER_KEY": f"kyu-peer-bench:{peer.name}:{uuid.uuid4().hex}:done",
        "PEER_DEFAULTS": "1" if defaults else "0",
    }
    ctx = Ctx(venv / "bin", 0, url, args.workers, _pool(args))
    client = claim_redis_db(url)
    try:
        if peer.store == "PostgreSQL":
            recreate_database(dbname, create=True)
            extra["PEER_DSN"] = pg_url_for(dbname)
        env = peer_env(peer, venv, ctx, extra)
        _run_or_fail([python, str(DRIVER), peer.app, "setup"], "setup", 300, cwd=APPS, env=env)
        out = _run_or_fail(
            [
                python,
                str(DRIVER),
                peer.app,
                "enqueue",
                str(args.single),
                str(args.jobs),
                str(BATCH),
            ],
            "enqueue",
            args.timeout,
            cwd=APPS,
            env=env,
        )
        figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        figures["processed"] = burn_down(peer, venv, args, client, extra)
        figures["processed_jobs_per_s"] = figures["processed"]["jobs_per_s"]
    finally:
        client.flushdb()
        client.close()
        if peer.store == "PostgreSQL":
            recreate_database(dbname, create=False)
    figures["peer_seconds"] = time.perf_counter() - started
    return figures


def run_kyu(args: argparse.Namespace) -> dict[str, Any]:
    """kyu-trio exactly as bench/throughput.py runs it, plus its single enqueue through each
    client, in the caller's transaction, and the bare INSERT + ZADD loop under them."""
    queue = new_queue_name("peers")
    extra = [queue + suffix for suffix in ("-single", "-client", "-asyncio", "-tx", "-floor")]
    try:
        figures: dict[str, Any] = dict(trio.run(enqueue_figures, queue, args.jobs, args.single))
        if args.single:
            figures.update(single_figures(queue, args.single))
        figures["bulk_enqueue_floor_per_s"] = bulk_enqueue_floor(queue + "-floor", args.jobs)
        figures["processed"] = run_workers(
            "bench._kyu_worker", queue, args.processes, args.workers, args.jobs
        )
    finally:
        cleanup(queue, *extra)
    figures["processed_jobs_per_s"] = figures["processed"]["jobs_per_s"]
    return figures


def single_figures(queue: str, single: int) -> dict[str, float]:
    """Single enqueue jobs/s, durable on return, through `Client`, `AsyncioClient`, a
    transaction of the caller's per job (``conn=``, committed before the next), and the
    floor: the same INSERT and ZADD in a bare blocking loop (bench/throughput.py)."""
    return {
        "single_enqueue_client_per_s": client_single(queue + "-client", single),
        "single_enqueue_asyncio_per_s": asyncio.run(asyncio_single(queue + "-asyncio", single)),
        "single_enqueue_transactional_per_s": transactional_single(queue + "-tx", single),
        "single_enqueue_floor_per_s": single_enqueue_floor(queue + "-floor", single),
        "single_insert_floor_per_s": single_insert_floor(queue + "-floor", single),
    }


def run_kyu_incr(args: argparse.Namespace, defaults: str | None = None) -> dict[str, Any]:
    """kyu-trio with the peers' no-op (one Redis INCR per job, bench/_kyu_incr_worker.py);
    processed jobs/s only, the enqueue side being kyu-trio's. ``defaults`` ("default" or
    "default:N", N workers): every Config default instead of ``--workers`` and pool_size 4."""
    queue = new_queue_name("peers-incr")
    counter = f"kyu-peer-bench:kyu-incr:{uuid.uuid4().hex}:done"
    saved = {k: os.environ.get(k) for k in ("PEER_COUNTER_KEY", "PEER_REDIS_URL")}
    os.environ.update(PEER_COUNTER_KEY=counter, PEER_REDIS_URL=REDIS_URL)  # run_workers' env
    try:
        trio.run(enqueue_figures, queue, args.jobs, 0)
        processed = run_workers(
            "bench._kyu_incr_worker",
            queue,
            args.processes,
            defaults or args.workers,
            args.jobs,
        )
        counted = int(redis.Redis.from_url(REDIS_URL).get(counter) or 0)
        if counted < args.jobs:
            raise PeerFailure(f"the handlers counted {counted} of {args.jobs} jobs")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        redis.Redis.from_url(REDIS_URL).delete(counter)
        cleanup(queue, queue + "-single")
    return {
        "single_enqueue_per_s": None,
        "bulk_enqueue_per_s": None,
        "processed": processed,
        "processed_jobs_per_s": processed["jobs_per_s"],
    }


# ---- report ----------------------------------------------------------------------------------

FIGURES = ("single_enqueue_per_s", "bulk_enqueue_per_s", "processed_jobs_per_s")
#: kyu-trio's other single enqueue figures (run_kyu), medians like FIGURES.
SINGLES = (
    ("single_enqueue_per_s", "kyu-trio, `Queue.enqueue` (trio)"),
    ("single_enqueue_client_per_s", "kyu-trio, `Client.enqueue` (threads)"),
    ("single_enqueue_asyncio_per_s", "kyu-trio, `AsyncioClient.enqueue` (asyncio)"),
    (
        "single_enqueue_transactional_per_s",
        "kyu-trio, `Client.enqueue(conn=...)`, one transaction per job, committed",
    ),
    (
        "single_enqueue_floor_per_s",
        "floor: the same INSERT then ZADD in a bare blocking loop (no framework)",
    ),
    (
        "single_insert_floor_per_s",
        "floor of a one-statement enqueue: the same INSERT alone, no push, bare loop",
    ),
)
KYU = "kyu-trio"
KYU_INCR = "kyu-trio + INCR"
KYUS = (KYU, KYU_INCR)
KYU_DEFAULTS = "kyu-trio at its defaults"
PGQ_DEFAULTS = "pgqueuer at its defaults"
DEFAULTS = (KYU_DEFAULTS, PGQ_DEFAULTS)
DEFAULTS_COMMAND = (
    ".venv/bin/python -m bench.peers --defaults-only --jobs {jobs} --processes {processes}"
    " --repeat {repeat}{sweep}"
)


def defaults_settings() -> dict[str, str]:
    """How each system of the defaults pair runs, read from the code it runs."""
    from kyu_trio import Config

    config = Config()
    return {
        KYU_DEFAULTS: (
            f"every Config default: workers={config.workers} per process, pool_size="
            f"{config.pool_size}, ... (metrics_port=0: two processes on one host); "
            "bench/_kyu_incr_worker.py QUEUE default"
        ),
        PGQ_DEFAULTS: (
            "pgqueuer.run(main), every argument its default (batch_size=10 in "
            f"{PEERS['pgqueuer'].pins[0]}), uvloop as `pgq run`; bench/_peers/pgqueuer_app.py"
            " with PEER_DEFAULTS=1"
        ),
    }


def sweep_name(workers: int) -> str:
    return f"kyu-trio at its defaults but workers={workers}"


def run_defaults(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == KYU_DEFAULTS:
        return run_kyu_incr(args, defaults="default")
    if name == PGQ_DEFAULTS:
        return run_peer(PEERS["pgqueuer"], args, defaults=True)
    workers = int(name.rsplit("=", 1)[1])
    return run_kyu_incr(args, defaults=f"default:{workers}")


KYU_FIG = "processed_jobs_per_s"


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the successful runs; 'failed: ...' if none succeeded."""
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return {"failed": runs[-1]["failed"], "runs": runs}
    out: dict[str, Any] = {"runs": runs}
    for key in (*FIGURES, *(k for k, _ in SINGLES[1:]), "bulk_enqueue_floor_per_s"):
        values = [r[key] for r in ok if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    if len(ok) < len(runs):
        out["note"] = f"{len(runs) - len(ok)} of {len(runs)} runs failed"
    return out


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _ratio(kyu: float | None, other: float | None) -> float | None:
    return kyu / other if kyu and other else None


def _rx(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 1 else f"{r:.1f}x"


def single_section(systems: dict[str, dict[str, Any]], ok: list[str]) -> list[str]:
    """kyu-trio's single enqueue through each client, and the PostgreSQL-backed peers'."""
    kyu = systems.get(KYU, {})
    pg_peers = [
        n for n in ok if PEERS[n].store == "PostgreSQL" and systems[n].get("single_enqueue_per_s")
    ]
    if "failed" in kyu or not kyu.get("single_enqueue_client_per_s"):
        return []
    best = max(pg_peers, key=lambda n: systems[n]["single_enqueue_per_s"], default=None)
    theirs = systems[best]["single_enqueue_per_s"] if best else None
    lines = [
        "## Single enqueue, durable on return",
        "",
        "One job per call, each call returning once the row is committed "
        "(`synchronous_commit` on), the next call after it.",
        "",
        f"| how | jobs/s | / {best or 'best PostgreSQL peer'} |",
        "|---|---:|---:|",
    ]
    for key, label in SINGLES:
        lines.append(f"| {label} | {_num(kyu.get(key))} | {_rx(_ratio(kyu.get(key), theirs))} |")
    for name in pg_peers:
        lines.append(f"| {name} | {_num(systems[name]['single_enqueue_per_s'])} | |")
    lines.append("")
    if kyu.get("bulk_enqueue_floor_per_s"):
        lines += [
            "Bulk enqueue's floor, the same rows in a bare blocking loop (per batch of 1,000: "
            "the sequence numbers, one COPY, one ZADD): "
            f"{_num(kyu['bulk_enqueue_floor_per_s'])} jobs/s, against kyu-trio's "
            f"{_num(kyu.get('bulk_enqueue_per_s'))}.",
            "",
        ]
    return lines


def summarize(data: dict[str, Any]) -> str:
    args = data["args"]
    systems: dict[str, dict[str, Any]] = data["systems"]
    kyu = systems.get(KYU, {})
    ok = [n for n, s in systems.items() if "failed" not in s and n in PEERS]
    ok.sort(key=lambda n: -(systems[n].get("processed_jobs_per_s") or 0))
    failed = [n for n, s in systems.items() if "failed" in s and n in PEERS]
    title = (
        f"# Peers ({args['jobs']:,} no-op jobs, {args['processes']} worker processes; single "
        f"enqueue over {args['single']:,} jobs; median of {args['repeat']})"
    )
    if args.get("defaults_only"):
        title = "# Peers: kyu-trio and pgqueuer at their defaults"
    lines = [title, "", *defaults_section(data)]
    if not ok and not kyu:  # --defaults-only
        lines += [
            f"Machine: {data['machine']['cpus']} CPUs, Python {data['machine']['python']}, "
            f"{data['machine']['platform']}; load average {data['load_before'][0]:.1f} before, "
            f"{data['load_after'][0]:.1f} after (1 min). PostgreSQL and Redis on the same "
            f"machine. Date: {data['date']}. Total run time: {data['total_seconds']:.0f} s.",
        ]
        return "\n".join(lines)
    lines += [
        "## Each system tuned alike",
        "",
        "| system | store | single enqueue jobs/s | bulk enqueue jobs/s | processed jobs/s "
        "| kyu-trio / system: single | kyu-trio / system: bulk "
        "| kyu-trio / system: processed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    if "failed" in kyu:
        lines.append(f"| **kyu-trio** | PostgreSQL | {kyu['failed']} | | | | | |")
    elif kyu:
        lines.append(
            "| **kyu-trio** | PostgreSQL | "
            + " | ".join(f"**{_num(kyu.get(k))}**" for k in FIGURES)
            + " | | | |"
        )
    incr = systems.get(KYU_INCR)
    if incr:
        shown = incr.get("failed") or _num(incr.get("processed_jobs_per_s"))
        lines.append(f"| kyu-trio + INCR (the peers' no-op) | PostgreSQL | | | {shown} | | | |")
    for name in ok:
        s = systems[name]
        ratios = [_rx(s.get("ratio", {}).get(k)) for k in FIGURES]
        lines.append(
            f"| {name} | {PEERS[name].store} | "
            + " | ".join(_num(s.get(k)) for k in FIGURES)
            + " | "
            + " | ".join(ratios)
            + " |"
        )
    for name in failed:
        reason = systems[name]["failed"].replace("|", "/")
        lines.append(f"| {name} | {PEERS[name].store} | failed: {reason} | | | | | |")
    lines += ["", "kyu-trio's ratio to each peer (processed, bulk enqueue, single enqueue):", ""]
    for name in ok:
        r = systems[name].get("ratio", {})
        lines.append(
            f"- kyu-trio / {name} = {_rx(r.get('processed_jobs_per_s'))} processed, "
            f"{_rx(r.get('bulk_enqueue_per_s'))} bulk, {_rx(r.get('single_enqueue_per_s'))} single"
        )
    if ok and "failed" not in kyu and kyu:
        lines += ["", "Against the best peer of this run:", ""]
        for key, label, pool in (
            ("processed_jobs_per_s", "processed jobs/s, kyu-trio's no-op handler (no INCR)", ok),
            ("bulk_enqueue_per_s", "bulk enqueue jobs/s", ok),
            (
                "single_enqueue_per_s",
                "single enqueue jobs/s, PostgreSQL-backed peers",
                [n for n in ok if PEERS[n].store == "PostgreSQL"],
            ),
            (
                "single_enqueue_per_s",
                "single enqueue jobs/s, Redis-only peers",
                [n for n in ok if PEERS[n].store == "Redis"],
            ),
        ):
            scored = [n for n in pool if systems[n].get(key)]
            if not scored:
                continue
            best = max(scored, key=lambda n: systems[n][key])
            lines.append(
                f"- {label}: best {best} {_num(systems[best][key])}; kyu-trio "
                f"{_num(kyu.get(key))} = {_rx(_ratio(kyu.get(key), systems[best][key]))}"
            )
    if incr and "failed" not in incr and ok:
        best = ok[0]
        lines += [
            "",
            f"kyu-trio + INCR runs kyu-trio with the peers' job (one Redis INCR per job, "
            f"bench/_kyu_incr_worker.py): {_num(incr['processed_jobs_per_s'])} processed "
            f"jobs/s, {_rx(_ratio(incr['processed_jobs_per_s'], systems[best].get(KYU_FIG)))}"
            f" the best peer ({best}).",
        ]
    lines += [
        "",
        "The processed ratios compare kyu-trio + INCR with each peer: the same job body. "
        "Single enqueue: the PostgreSQL-backed systems (kyu-trio, procrastinate, pgqueuer) "
        "return once the job is committed; the Redis-only peers return before anything is "
        "durable on disk.",
        "",
        *single_section(systems, ok),
        "## How each system ran",
        "",
        f"- **kyu-trio**: bench/_kyu_worker.py, {args['processes']} processes x "
        f"{args['workers']} workers, enqueue_many in batches of {BATCH} "
        "(bench/throughput.py's workload).",
    ]
    if incr:
        lines.append(
            f"- **kyu-trio + INCR**: bench/_kyu_incr_worker.py, {args['processes']} processes "
            f"x {args['workers']} workers, pool_size 4; its async handler awaits one INCR."
        )
    for name in PEERS:
        if name not in systems:
            continue
        cfg = data["config"][name]
        lines.append(
            f"- **{name}** ({', '.join(cfg['pins'])}): {cfg['config']}; "
            f"{args['processes']} worker processes; bulk: {cfg['bulk']}."
        )
    lines += [
        "",
        "Method: each system's jobs are no-ops; every peer's job does one Redis INCR on a "
        "counter the benchmark polls (a round trip per job kyu-trio's no-op handler does not "
        "pay: kyu-trio's completion is read from its jobs table, and the 'kyu-trio + INCR' row "
        "shows it paying the same). Processed jobs/s is the job "
        "count over the wall time from starting the worker processes until every job has run, "
        "start-up included. Each peer has its own virtualenv (bench/.venvs/), Redis database "
        "and, if PostgreSQL-backed, its own PostgreSQL database, dropped after its run.",
        "",
        f"Machine: {data['machine']['cpus']} CPUs, Python {data['machine']['python']}, "
        f"{data['machine']['platform']}; load average {data['load_before'][0]:.1f} before, "
        f"{data['load_after'][0]:.1f} after (1 min). PostgreSQL and Redis on the same machine.",
        f"Date: {data['date']}. Total run time: {data['total_seconds']:.0f} s.",
        f"Reproduce: `{data['command']}`",
    ]
    return "\n".join(lines)


def defaults_section(data: dict[str, Any]) -> list[str]:
    """The comparison of defaults: kyu-trio's must process at least twice the jobs/s."""
    systems: dict[str, dict[str, Any]] = data["systems"]
    if not all(name in systems for name in DEFAULTS):
        return []
    sweep = [sweep_name(n) for n in data["args"].get("sweep") or []]
    args = data["args"]
    lines = [
        "## Defaults: kyu-trio and pgqueuer as installed, nothing tuned",
        "",
        f"{args['jobs']:,} jobs of one awaited Redis INCR each, {args['processes']} worker "
        "processes per system, both systems in the same rounds (order alternating); "
        f"median of {args['repeat']}.",
        "",
        "| system | settings | processed jobs/s | runs |",
        "|---|---|---:|---|",
    ]
    for name in [*DEFAULTS, *sweep]:
        system = systems[name]
        runs = " / ".join(
            r.get("failed") or _num(r.get(KYU_FIG)) for r in system.get("runs", [])
        ).replace("|", "/")
        shown = f"failed: {system['failed']}" if "failed" in system else _num(system.get(KYU_FIG))
        settings = data["defaults"].get(name, "as kyu-trio at its defaults, but this many workers")
        lines.append(f"| {name} | {settings} | {shown} | {runs} |")
    ratio = _ratio(systems[KYU_DEFAULTS].get(KYU_FIG), systems[PGQ_DEFAULTS].get(KYU_FIG))
    verdict = "n/a" if ratio is None else ("met" if ratio >= 2 else "**missed**")
    lines += [
        "",
        f"kyu-trio / pgqueuer at their defaults = {_rx(ratio)} processed jobs/s "
        f"(target >= 2x: {verdict}).",
        "",
        "Reproduce: `"
        + DEFAULTS_COMMAND.format(
            jobs=args["jobs"],
            processes=args["processes"],
            repeat=args["repeat"],
            sweep=f" --sweep {','.join(map(str, args['sweep']))}" if args.get("sweep") else "",
        )
        + "`",
        "",
    ]
    return lines


def ensure_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            f"peers: matplotlib is not importable: installing {REQUIREMENTS.relative_to(ROOT)} "
            f"into {sys.prefix} with pip"
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
                str(REQUIREMENTS),
            ],
            check=False,
        )
        if done.returncode != 0:
            print("peers: WARNING: could not install matplotlib; no plot will be drawn")
            return False
    return True


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems: dict[str, dict[str, Any]] = data["systems"]
    names = sorted(systems, key=lambda n: systems[n].get("processed_jobs_per_s") or 0)
    values = [systems[n].get("processed_jobs_per_s") or 0 for n in names]
    palette = {KYU: "#d62728", KYU_INCR: "#ff9896", KYU_DEFAULTS: "#ff7f0e"}
    colors = [palette.get(n, "#1f77b4") for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6))
    bars = ax.barh(names, values, color=colors)
    top = max(values, default=0) or 1
    for bar, name, value in zip(bars, names, values, strict=True):
        label = "failed" if "failed" in systems[name] else f"{value:,.0f}"
        ax.text(
            bar.get_width() + top * 0.01,
            bar.get_y() + bar.get_height() / 2,
            label,
            va="center",
            fontsize=9,
        )
    args = data["args"]
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("processed jobs/s (higher is better)")
    ax.set_title(
        f"{args['jobs']:,} no-op jobs, {args['processes']} worker processes, "
        f"{data['machine']['cpus']} CPUs, {data['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per system (x1000)")
    parser.add_argument("--single", type=int, default=2_000, help="jobs enqueued one by one")
    parser.add_argument("--processes", type=int, default=2, help="worker processes per system")
    parser.add_argument(
        "--workers",
        type=int,
        default=50,
        help="kyu-trio workers per process; the asyncio peers' concurrency per process",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=0,
        help="celery's and huey's process pool per worker process (default: cores/processes)",
    )
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers")
    parser.add_argument("--no-kyu", action="store_true", help="skip kyu-trio (no ratios)")
    parser.add_argument(
        "--no-kyu-incr",
        action="store_true",
        help="skip the kyu-trio run whose handler does the peers' INCR",
    )
    parser.add_argument(
        "--defaults-only",
        action="store_true",
        help="run only kyu-trio and pgqueuer, each at its own defaults",
    )
    parser.add_argument(
        "--no-defaults",
        action="store_true",
        help="skip kyu-trio and pgqueuer at their defaults",
    )
    parser.add_argument(
        "--sweep",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[],
        metavar="N,N,...",
        help="with the defaults: also kyu-trio at its defaults but N workers per process",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per system; medians")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per phase")
    parser.add_argument("--stall", type=float, default=60, help="seconds without progress")
    parser.add_argument(
        "--redis-db-base",
        type=int,
        default=1,
        help=f"first Redis database number for the peers ({len(PEERS)} consecutive)",
    )
    args = parser.parse_args()
    args.jobs -= args.jobs % BATCH
    if args.jobs <= 0 or args.single < 0:
        parser.error("--jobs must be at least 1000")
    peers = [] if args.defaults_only else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {', '.join(PEERS)}")

    started = time.perf_counter()
    can_plot = not args.defaults_only and ensure_matplotlib()
    data: dict[str, Any] = {
        "machine": machine(),
        "command": ".venv/bin/python -m bench.peers " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "load_before": os.getloadavg(),
        "config": {},
        "defaults": defaults_settings(),
        "systems": {},
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    order = [] if args.no_kyu or args.defaults_only else [KYU]
    order += [] if args.no_kyu_incr or args.defaults_only else [KYU_INCR]
    pair = [] if args.no_defaults else [*DEFAULTS, *map(sweep_name, args.sweep)]
    for round_ in range(args.repeat):
        # The pair runs back to back, first one then the other first: both see the same load.
        for name in (pair if round_ % 2 == 0 else pair[::-1]) + order + peers:
            print(f"peers: [{round_ + 1}/{args.repeat}] {name} ...", flush=True)
            try:
                if name == KYU:
                    result = run_kyu(args)
                elif name == KYU_INCR:
                    result = run_kyu_incr(args)
                elif name in pair:
                    result = run_defaults(name, args)
                else:
                    result = run_peer(PEERS[name], args)
            except Exception as exc:  # a peer that fails is recorded, the others still run
                reason = str(exc) if isinstance(exc, PeerFailure) else repr(exc)
                result = {"failed": reason}
            runs.setdefault(name, []).append(result)
            shown = result.get("failed") or ", ".join(f"{k} {_num(result.get(k))}" for k in FIGURES)
            print(f"peers: {name}: {shown}", flush=True)
    for name in runs:
        data["systems"][name] = median_of(runs[name])
    for name in peers:
        peer, venv = PEERS[name], VENVS / name
        data["config"][name] = {
            "pins": list(peer.pins),
            "config": peer.config(args),
            "bulk": peer.bulk,
            "redis_db": args.redis_db_base + REDIS_DBS[name] - 1,
            "worker_command": shlex.join(
                peer.command(Ctx(Path("bin"), 0, "URL", args.workers, _pool(args)))
            ),
            "freeze": freeze(venv) if (venv / "bin" / "python").exists() else [],
        }
    kyu = data["systems"].get(KYU, {})
    incr = data["systems"].get(KYU_INCR, {})
    for name in peers:
        system = data["systems"][name]
        if "failed" not in system and "failed" not in kyu:
            system["ratio"] = {k: _ratio(kyu.get(k), system.get(k)) for k in FIGURES}
            # Processed jobs/s is compared on the same job body: the peers' INCR.
            system["ratio"][KYU_FIG] = (
                None if "failed" in incr else _ratio(incr.get(KYU_FIG), system.get(KYU_FIG))
            )
    data["load_after"] = os.getloadavg()
    data["total_seconds"] = time.perf_counter() - started
    if args.defaults_only:
        write_results("peers-defaults", data, summarize(data))
        return
    write_results("peers", data, summarize(data))
    if can_plot:
        plot(data, RESULTS / "peers.png")
        print(f"peers: wrote {(RESULTS / 'peers.png').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
