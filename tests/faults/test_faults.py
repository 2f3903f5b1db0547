"""Fault injection against real servers and real worker processes.

Each scenario enqueues ``record`` jobs (every execution is written to ``kyu_fault_exec``),
injects a fault, waits for quiescence and checks the invariant (`FaultEnv.check`): every
job ``completed`` exactly once, none lost, none left running; executions beyond one per
job only where the fault made them unavoidable. Each prints
``scenario=<name> enqueued=N completed=N duplicates=D lost=0`` (run pytest with ``-s``).

Timings are shrunk (heartbeat 0.2 s, stale after 1 s, reaper every 0.3 s, scheduler
every 0.2 s) and jobs carry short ``job_timeout`` values, since the reaper rescues a job
only when its heartbeat is stale *and* its ``job_timeout`` has passed since its claim.

``KYU_FAULTS_SCALE`` (default 1) scales the job count of the many-workers scenario;
``KYU_FAULTS_SEED`` fixes the random kill moments.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest
import trio

from kyu_trio import EnqueueRequest, KyuConnectionError, Queue
from tests.faults.harness import FaultEnv, Report, Worker, record_jobs, scale

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("KYU_FAULTS_SEED", str(random.randrange(2**32))))


@pytest.fixture
def rng() -> random.Random:
    print(f"\nKYU_FAULTS_SEED={SEED}", flush=True)
    return random.Random(SEED)


def rescued_ids(rows: dict[str, dict[str, Any]]) -> set[str]:
    """Jobs the reaper took back from a lost worker (the message stays after completion)."""
    return {
        job_id
        for job_id, row in rows.items()
        if (row["error_message"] or "").startswith("worker lost while running")
    }


def explain(report: Report, ids: set[str]) -> str:
    """The rows and executions of some jobs, for an assertion message."""
    return "\n".join(
        f"{i}: executions={report.executions.get(i)} row={report.rows.get(i)}" for i in sorted(ids)
    )


def completed_count(env: FaultEnv) -> int:
    return env.status_counts().get("completed", 0)


# ---- worker processes dying ----------------------------------------------------------


def test_sigkill_mid_job_repeatedly(env: FaultEnv, rng: random.Random) -> None:
    """A worker process SIGKILLed mid-job three times (restarted each time) while a
    second one keeps serving: the jobs it held are rescued and re-run, nothing is lost."""
    victim = env.start_worker(workers=2)
    env.start_worker(workers=2)
    ids = env.enqueue(record_jobs(400, "0.05", job_timeout=2.0, max_retries=10))
    held_at_kill: set[str] = set()
    for _ in range(3):
        current = victim
        env.wait_until(lambda w=current: bool(env.running_of(w)), 30, "the victim to run a job")
        time.sleep(rng.uniform(0.0, 0.3))
        assert completed_count(env) < len(ids), "the run ended before the kill: add jobs"
        victim.kill()
        # Dead now: what it still holds is exactly what was in flight when it died.
        held_at_kill |= env.running_of(victim)
        victim = env.start_worker(workers=2)
    report = env.check("sigkill-mid-job", ids)
    env.stop_all()
    assert held_at_kill, "no job was in flight at any kill"
    # Only jobs in flight in a killed worker ran twice; each of them was rescued.
    assert report.duplicated_ids <= held_at_kill
    assert report.duplicates <= len(held_at_kill)
    assert held_at_kill <= rescued_ids(report.rows)
    assert all(n <= 2 for n in report.executions.values())


def test_sigterm_in_flight_jobs_finish_or_return_without_retry(env: FaultEnv) -> None:
    """SIGTERM with 8 jobs in flight: the 4 short ones finish within the grace period,
    the 4 long ones are put back to pending at its end without spending a retry."""
    grace = 3.0
    first = env.start_worker(workers=8, shutdown_grace=grace)
    ids = env.enqueue(
        record_jobs(4, "1.0", job_timeout=30.0) + record_jobs(4, "20/0.05", job_timeout=60.0)
    )
    short, long = ids[:4], ids[4:]
    env.wait_until(lambda: len(env.running_of(first)) == 8, 30, "all 8 jobs to be running")
    took = first.terminate()
    assert took < grace + 5, f"stopping took {took:.1f}s with a {grace}s grace period"
    for job_id in short:
        row = env.job(job_id)
        assert (row["status"], row["attempt"], row["retry_count"]) == ("completed", 1, 0)
    for job_id in long:
        row = env.job(job_id)
        assert (row["status"], row["attempt"], row["retry_count"]) == ("pending", 1, 0), row
        assert row["error_message"] is None
        assert env.executions_of(job_id) == []  # cut off mid-sleep, never recorded
    env.start_worker(workers=4)
    report = env.check("sigterm-in-flight", ids)
    env.stop_all()
    assert report.duplicates == 0
    assert {row["retry_count"] for row in report.rows.values()} == {0}
    assert {report.rows[i]["attempt"] for i in long} == {2}


def test_sigterm_restarts_under_load(env: FaultEnv, rng: random.Random) -> None:
    """A worker stopped with SIGTERM three times mid-run (and restarted) while another
    serves: every in-flight job finishes in the grace period; no retry is spent, nothing
    runs twice."""
    victim = env.start_worker(workers=2, shutdown_grace=5.0)
    env.start_worker(workers=2)
    ids = env.enqueue(record_jobs(300, "0.05", job_timeout=5.0, max_retries=10))
    for _ in range(3):
        current = victim
        env.wait_until(lambda w=current: bool(env.running_of(w)), 30, "the victim to run a job")
        time.sleep(rng.uniform(0.0, 0.3))
        assert completed_count(env) < len(ids), "the run ended before the signal: add jobs"
        took = victim.terminate()
        assert took < 5.0, f"a graceful stop with 0.05 s jobs took {took:.1f}s"
        assert not env.running_of(victim)
        victim = env.start_worker(workers=2, shutdown_grace=5.0)
    report = env.check("sigterm-under-load", ids)
    env.stop_all()
    assert report.duplicates == 0
    assert {row["retry_count"] for row in report.rows.values()} == {0}
    assert not rescued_ids(report.rows)


# ---- Redis going away -----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["flushall", "restart-empty"])
def test_redis_loss_mid_run(env: FaultEnv, fault: str) -> None:
    """Redis flushed, or killed and restarted empty, mid-run: the scheduler notices the
    missing marker and resyncs from PostgreSQL; every job completes once."""
    env.start_worker(workers=2)
    env.start_worker(workers=2)
    ids = env.enqueue(record_jobs(300, "0.02"))
    env.wait_until(lambda: completed_count(env) >= 30, 30, "30 jobs to complete")
    if fault == "flushall":
        env.redis.flushall()
    else:
        env.redis.restart_empty()
    left = len(ids) - completed_count(env)
    assert left > 100, "the run ended before the fault: add jobs"
    report = env.check(f"redis-{fault}", ids, limit=60)
    env.stop_all()
    assert report.duplicates == 0
    assert not rescued_ids(report.rows)


def test_redis_long_outage_then_back_empty(env: FaultEnv) -> None:
    """Redis down for 5 s, then back empty. Jobs enqueued during the outage are committed
    (their push fails and is left to the resync); everything completes once."""
    workers = [env.start_worker(workers=2), env.start_worker(workers=2)]
    outage = 5.0

    async def scenario() -> list[str]:
        queue = Queue(env.config())
        async with queue:
            ids = await queue.enqueue_many(record_jobs(300, "0.02"))
            await trio.to_thread.run_sync(
                env.wait_until, lambda: completed_count(env) >= 30, 30, "30 jobs to complete"
            )
            await trio.to_thread.run_sync(env.redis.kill)
            down_at = trio.current_time()
            # enqueue() with Redis down: the rows are committed, the push is left to the
            # resync sweep (a warning is logged), and the ids come back.
            ids += await queue.enqueue_many(record_jobs(50, "0.02"))
            await trio.sleep(max(0.0, outage - (trio.current_time() - down_at)))
            assert all(w.alive() for w in workers), "a worker died during the outage"
            await trio.to_thread.run_sync(env.redis.start)  # same port, empty
        return ids

    ids = trio.run(scenario)
    assert env.status_counts().get("completed", 0) < len(ids)
    report = env.check("redis-long-outage", ids, limit=90)
    env.stop_all()
    assert report.duplicates == 0
    for worker in workers:
        # One line per loop (fetchers, scheduler, reaper) when the outage starts and one
        # when it ends, not one per attempt (each loop retried several times in 5 s).
        log = worker.errors().splitlines()
        started = [ln for ln in log if "retrying with backoff" in ln]
        ended = [ln for ln in log if "connection is back" in ln]
        assert 1 <= len(started) <= 10, "\n".join(started)
        assert ended, "no line says the connection is back"
        print(f"{worker.name}: {len(started)} outage lines, {len(ended)} recovery lines")


# ---- PostgreSQL going away ------------------------------------------------------------


def test_postgres_restart_mid_run(env: FaultEnv) -> None:
    """``pg_ctl restart -m fast`` mid-run cuts every connection: workers back off and
    resume; outcomes that could not be written are retried; nothing is lost."""
    env.start_worker(workers=4)
    env.start_worker(workers=4)
    ids = env.enqueue(record_jobs(400, "0.02", job_timeout=10.0))
    env.wait_until(lambda: completed_count(env) >= 40, 30, "40 jobs to complete")
    env.pg.restart()
    assert completed_count(env) < len(ids) - 100, "the run ended before the restart: add jobs"
    report = env.check("postgres-restart", ids, limit=90)
    env.stop_all()
    # Outcomes that could not be written during the restart are written once it is back
    # (the completer retries for 15 s), so nothing runs twice. (A claim whose commit was
    # cut off unanswered leaves its row 'running' until the reaper rescues it: one run.)
    assert report.duplicates == 0, explain(report, report.duplicated_ids)


def test_postgres_down_enqueue_fails_cleanly(env: FaultEnv, monkeypatch: Any) -> None:
    """PostgreSQL stopped for 3 s mid-run: enqueue() raises KyuConnectionError and
    leaves no id in Redis; the workers survive and finish every job once it is back."""
    from kyu_trio._runtime import _enqueue

    # The enqueue repeats its insert for up to 5 s before it gives up (a lost answer may
    # hide a commit); keep the outage at 3 s, as the stale_job_timeout of 1 s assumes.
    monkeypatch.setattr(_enqueue, "ENQUEUE_RETRY_LIMIT", 0.3)
    workers = [env.start_worker(workers=2), env.start_worker(workers=2)]

    async def scenario() -> list[str]:
        queue = Queue(env.config())
        async with queue:
            ids = await queue.enqueue_many(record_jobs(200, "0.02", job_timeout=10.0))
            await trio.to_thread.run_sync(
                env.wait_until, lambda: completed_count(env) >= 20, 30, "20 jobs to complete"
            )
            await trio.to_thread.run_sync(env.pg.stop)
            try:
                size = env.redis.zcard(env.queue)
                with pytest.raises(KyuConnectionError) as info:
                    await queue.enqueue("record", "0")
                assert f"127.0.0.1:{env.pg.port}" in str(info.value)
                assert env.redis.zcard(env.queue) <= size  # nothing pushed for it
                await trio.sleep(3.0)
                assert all(w.alive() for w in workers), "a worker died during the outage"
            finally:
                await trio.to_thread.run_sync(env.pg.ensure_running)
        return ids

    ids = trio.run(scenario)
    report = env.check("postgres-down-3s", ids, limit=90)
    env.stop_all()
    assert report.duplicates == 0, explain(report, report.duplicated_ids)


# ---- leases: heartbeats and fencing ------------------------------------------------------


def test_long_heartbeating_job_is_not_rescued(env: FaultEnv) -> None:
    """A 3 s job with stale_job_timeout=1 s (job_timeout 10 s) whose worker lives: its
    heartbeat keeps it fresh, no reaper touches it, it runs exactly once."""
    env.start_worker(workers=2)
    env.start_worker(workers=2)
    [job_id] = env.enqueue([EnqueueRequest("record", "3", job_timeout=10.0, max_retries=3)])
    env.wait_until(lambda: env.job(job_id)["status"] == "running", 30, "the job to start")
    worst_staleness, lease_age = 0.0, 0.0
    while True:
        rows = env.sql(
            "SELECT status, extract(epoch FROM clock_timestamp() - heartbeat_at), "
            "extract(epoch FROM heartbeat_at - locked_at) FROM kyu_jobs WHERE id = %s",
            (job_id,),
        )
        status, staleness, age = rows[0]
        if status != "running":
            break
        worst_staleness = max(worst_staleness, float(staleness))
        lease_age = max(lease_age, float(age))
        time.sleep(0.05)
    report = env.check("long-heartbeating-job", [job_id])
    env.stop_all()
    row = report.rows[job_id]
    assert (row["attempt"], row["retry_count"], row["error_message"]) == (1, 0, None)
    assert report.executions[job_id] == 1
    assert lease_age > 2.0, f"the heartbeat did not advance ({lease_age:.2f}s after the claim)"
    assert worst_staleness < 1.0, f"the heartbeat went {worst_staleness:.2f}s stale"


def test_frozen_worker_is_fenced_after_rescue(env: FaultEnv) -> None:
    """A worker frozen (SIGSTOP) past stale_job_timeout and the job's job_timeout: the
    other worker's reaper rescues the job and it runs again there. Resumed (SIGCONT),
    the frozen worker finishes its run late; its writes are fenced off and change
    nothing. Two executions are unavoidable here and allowed."""
    frozen = env.start_worker(workers=1)
    [job_id] = env.enqueue([EnqueueRequest("record", "1.0", job_timeout=2.0, max_retries=3)])
    env.wait_until(lambda: job_id in env.running_of(frozen), 30, "the job to start")
    frozen.signal(signal.SIGSTOP)
    try:
        rescuer = env.start_worker(workers=2)
        env.wait_until(
            lambda: env.job(job_id)["status"] == "completed", 30, "the rescued job to complete"
        )
        before = env.job(job_id)
        assert before["attempt"] == 2
        assert before["locked_by"] == rescuer.worker_id
        assert before["error_message"] == "worker lost while running (attempt 1)"
    finally:
        frozen.signal(signal.SIGCONT)
    # The frozen run now ends (and records its execution) and its worker tries to write
    # the outcome with the old claim token.
    env.wait_until(lambda: len(env.executions_of(job_id)) == 2, 15, "the late run to finish")
    time.sleep(1.5)  # time for its completion/failure write and a heartbeat
    report = env.check("sigstop-sigcont", [job_id])
    frozen_exit = frozen.terminate()
    env.stop_all()
    after = env.job(job_id)
    for column in ("status", "attempt", "retry_count", "locked_by", "completed_at",
                   "error_message", "heartbeat_at"):  # fmt: skip
        assert after[column] == before[column], (column, before[column], after[column])
    assert sorted(a for a, _ in env.executions_of(job_id)) == [1, 2]
    assert report.duplicates == 1
    assert frozen_exit < 10


# ---- poison jobs -----------------------------------------------------------------------


def test_poison_job_dies_after_max_retries(env: FaultEnv) -> None:
    """A job whose handler kills its process (os._exit(1)) is claimed max_retries + 1
    times, then marked dead with "worker lost while running (attempt 3)". A supervisor
    restarts each killed worker; 50 normal jobs beside it all complete."""
    live: list[Worker] = [env.start_worker(workers=2), env.start_worker(workers=2)]
    crashes = 0

    def supervise() -> None:
        nonlocal crashes
        for i, worker in enumerate(live):
            if not worker.alive():
                assert worker.proc.returncode == 1, worker.errors()[-2000:]
                crashes += 1
                live[i] = env.start_worker(workers=2, ready=False)

    ids = env.enqueue(
        [
            EnqueueRequest("poison", "", max_retries=2, job_timeout=1.0),
            *record_jobs(50, "0.02", job_timeout=2.0, max_retries=10),
        ]
    )
    poison, normal = ids[0], ids[1:]
    report = env.check("poison-job", ids, expect_dead=[poison], on_poll=supervise, limit=90)
    for worker in live:
        worker.wait_ready()
    env.stop_all()
    row = report.rows[poison]
    assert row["status"] == "dead"
    assert row["attempt"] == 3
    assert row["retry_count"] == 2
    assert row["error_message"] == "worker lost while running (attempt 3)"
    assert crashes == 3
    assert report.completed == len(normal)
    # Normal jobs that shared a process with the poison job may have run twice.
    unexplained = report.duplicated_ids - rescued_ids(report.rows)
    assert not unexplained, explain(report, unexplained)


# ---- many workers ---------------------------------------------------------------------


def test_many_workers_complete_each_job_once(env: FaultEnv) -> None:
    """4 worker processes through 20,000 zero-second jobs (times KYU_FAULTS_SCALE): each
    completed exactly once, executed exactly once, and every process took part.

    No fault is injected, so no duplicate is allowed. (Before 16982b6 a few per run came
    from a heartbeat/completion deadlock whose failed completion write was then dropped;
    test_write_races.py reproduces both deterministically.)
    """
    n = max(100, int(20_000 * scale()))
    ids = env.enqueue(record_jobs(n, "0", job_timeout=5.0, max_retries=3))
    # A realistic reaper pace: every pass sweeps up to 20,000 pending rows.
    procs = [env.start_worker(workers=8, ready=False, reaper_interval=1.0) for _ in range(4)]
    for proc in procs:
        proc.wait_ready()
    report = env.check(f"4-workers-{n}-jobs", ids, limit=240)
    env.stop_all()
    assert report.duplicates == 0, explain(report, report.duplicated_ids)
    assert not rescued_ids(report.rows)
    per_process = env.sql(
        "SELECT count(DISTINCT pid) FROM kyu_fault_exec e JOIN kyu_jobs j ON j.id = e.job_id "
        "WHERE j.queue = %s",
        (env.queue,),
    )
    assert per_process[0][0] == 4
