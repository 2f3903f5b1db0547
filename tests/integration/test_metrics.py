"""The metrics endpoint of a serving worker, scraped over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from kyu_trio import Config, Queue, current_job
from tests.conftest import ThrowawayRedis, free_port

pytestmark = pytest.mark.integration

#: What each metric counts and where, as its HELP text says it: operators read these.
LEADER_SAMPLED = (
    "sampled every metrics_sample_interval by the process that leads the queue's "
    "maintenance (see kyu_leader), and exported by it alone; absent until a sample "
    "succeeds and after one fails (see kyu_up)"
)
EXPECTED_HELP = {
    "kyu_jobs_enqueued": (
        "Jobs enqueued by this process (Queue.enqueue and enqueue_many called here); jobs "
        "enqueued by other processes are counted there, not here"
    ),
    "kyu_jobs_processed": (
        "Runs that this process's workers finished and recorded, by outcome: completed; "
        "failed (a retry is scheduled); dead (no retry left, also counting jobs this "
        "process's reaper declared dead); requeued (put back at shutdown without spending "
        "a retry); snoozed (the handler raised Snooze); cancelled (cancel_job cancelled it "
        "while it ran)"
    ),
    "kyu_job_failures": (
        "Runs that this process's workers recorded as failed or dead (the handler raised, "
        "timed out or had no registered handler), by job type"
    ),
    "kyu_jobs_dead": (
        "Jobs that ended dead in this process: runs with no retry left, plus jobs this "
        "process's reaper found on a lost worker at their last try"
    ),
    "kyu_retries": (
        "Failed runs of this process's workers for which a retry was scheduled, by job type"
    ),
    "kyu_job_duration_seconds": (
        "Handler run time of the runs this process's workers finished and recorded, by job "
        "type and outcome"
    ),
    "kyu_job_wait_seconds": (
        "Time from when a job was due (enqueued, scheduled_at or retry time) until this "
        "process's workers claimed it, by job type"
    ),
    "kyu_jobs_running": "Jobs this process's workers have claimed and not yet recorded",
    "kyu_scheduler_promoted": (
        "Due scheduled jobs and retries that this process's scheduler pushed to Redis"
    ),
    "kyu_reaper_rescued": (
        "Jobs this process's reaper took back from lost workers (failed with a retry due "
        "after the usual backoff, or dead when no retry was left)"
    ),
    "kyu_redis_resyncs": (
        "Times this process refilled Redis from PostgreSQL (Redis was new, flushed or "
        "restarted empty)"
    ),
    "kyu_jobs_pruned": (
        "Finished jobs that this process deleted, as the queue's maintenance leader, once "
        "they were older than their retention (Config.retention_completed, "
        "retention_cancelled, retention_dead), by status"
    ),
    "kyu_queue_depth": ("Job ids of the whole queue waiting in Redis; " + LEADER_SAMPLED),
    "kyu_queue_lag_seconds": (
        "Age of the whole queue's oldest due job that no worker has started, 0 when none "
        "waits (PostgreSQL); " + LEADER_SAMPLED
    ),
    "kyu_jobs_by_status": "Jobs of the whole queue in PostgreSQL, by status; " + LEADER_SAMPLED,
    "kyu_queue_paused": "1 while the queue is paused (Queue.pause), else 0; " + LEADER_SAMPLED,
    "kyu_up": (
        "1 when this process's last check (every metrics_sample_interval: the queue-wide "
        "sample on the leader, a ping elsewhere) reached PostgreSQL and Redis within 10 s, "
        "else 0"
    ),
    "kyu_leader": (
        "1 while this process leads the queue's maintenance (promotion of due jobs, "
        "rescue, the Redis sweep, cron, pruning, and the queue-wide samples), else 0; "
        "sum by queue is 1 when all is well"
    ),
    "kyu_info": "Always 1: the kyu-trio version of this process and the queue it serves",
}
SAMPLED = ("kyu_queue_depth", "kyu_queue_lag_seconds", "kyu_jobs_by_status", "kyu_queue_paused")

Key = tuple[str, tuple[tuple[str, str], ...]]


async def http_get(port: int, path: str) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def scrape(port: int) -> list[Sample]:
    status, text = await http_get(port, "/metrics")
    assert status == 200, text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def by_key(samples: list[Sample], queue: str) -> dict[Key, float]:
    """Samples by (name, labels without ``queue``); every kyu_ sample must name ``queue``."""
    out = {}
    for s in samples:
        labels = dict(s.labels)
        if s.name.startswith("kyu_"):
            assert labels.pop("queue", None) == queue, s
        out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out


async def test_metrics_count_every_outcome(make_config: Callable[..., Config]) -> None:
    port = free_port()
    queue = Queue(
        make_config(
            metrics_port=port, workers=2, metrics_sample_interval=0.1, scheduler_interval=0.2
        )
    )
    finished = trio.Event()
    expected_runs = 6  # ok x3, flaky x2 (fails once), bad x1 (max_retries=0)
    runs = 0

    def ran() -> None:
        nonlocal runs
        runs += 1
        if runs == expected_runs:
            finished.set()

    @queue.handler("ok")
    async def ok(payload: str) -> None:
        ran()

    @queue.handler("flaky")
    async def flaky(payload: str) -> None:
        ran()
        if current_job().retry_count == 0:
            raise RuntimeError("once")

    @queue.handler("bad")
    async def bad(payload: str) -> None:
        ran()
        raise ValueError("always")

    async with queue:
        for _ in range(3):
            await queue.enqueue("ok", "")
        await queue.enqueue("flaky", "")
        await queue.enqueue("bad", "", max_retries=0)
        await queue.enqueue("mystery", "", max_retries=0)  # no handler: label "unknown"
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            assert queue.metrics_port == port
            with trio.fail_after(20):
                await finished.wait()
                await trio.sleep(0.5)  # completer flush + a sampler tick
            samples = await scrape(port)
            queue.shutdown()
    m = by_key(samples, queue.config.queue_name)
    assert m[("kyu_jobs_enqueued_total", ())] == 6
    assert m[("kyu_jobs_processed_total", (("status", "completed"),))] == 4
    assert m[("kyu_jobs_processed_total", (("status", "failed"),))] == 1
    assert m[("kyu_jobs_processed_total", (("status", "dead"),))] == 2
    assert m[("kyu_jobs_dead_total", ())] == 2
    assert m[("kyu_job_failures_total", (("job_type", "flaky"),))] == 1
    assert m[("kyu_job_failures_total", (("job_type", "bad"),))] == 1
    assert m[("kyu_job_failures_total", (("job_type", "unknown"),))] == 1
    assert m[("kyu_retries_total", (("job_type", "flaky"),))] == 1
    assert m[("kyu_job_duration_seconds_count", (("job_type", "ok"), ("status", "completed")))] == 3
    assert m[("kyu_job_wait_seconds_count", (("job_type", "ok"),))] == 3
    assert m[("kyu_job_wait_seconds_count", (("job_type", "flaky"),))] == 2
    assert m[("kyu_jobs_by_status", (("status", "completed"),))] == 4
    assert m[("kyu_jobs_by_status", (("status", "dead"),))] == 2
    assert m[("kyu_queue_depth", ())] == 0
    assert m[("kyu_jobs_running", ())] == 0
    assert m[("kyu_up", ())] == 1
    assert m[("kyu_info", (("version", "0.1.0"),))] == 1
    assert ("process_resident_memory_bytes", ()) in m


async def test_scrape_names_the_queue_and_says_where_each_metric_is_counted(
    make_config: Callable[..., Config],
) -> None:
    """A producer and a worker in separate Queue objects (as in separate processes): the
    worker's per-process counters count only what it did, its sampled gauges the whole
    queue, and the HELP texts say which is which."""
    port = free_port()
    producer = Queue(make_config())
    worker = Queue(make_config(metrics_port=port, metrics_sample_interval=0.1))
    done = trio.Event()
    runs = 0

    @worker.handler("t")
    async def t(payload: str) -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            done.set()

    async with producer, worker:
        await producer.enqueue_many([("t", ""), ("t", "")])
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            with trio.fail_after(20):
                await done.wait()
                while True:  # the completer's write, then a sample taken after it
                    samples = await scrape(port)
                    m = by_key(samples, worker.config.queue_name)
                    if m.get(("kyu_jobs_by_status", (("status", "completed"),))) == 2:
                        break
                    await trio.sleep(0.05)
            _, text = await http_get(port, "/metrics")
            worker.shutdown()

    name = worker.config.queue_name
    kyu = [s for s in samples if s.name.startswith("kyu_")]
    assert {s.labels.get("queue") for s in kyu} == {name}
    assert [s.name for s in samples if s.name.endswith("_created")] == []
    assert "_created" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {n: f.documentation for n, f in families.items() if n.startswith("kyu_")} == (
        EXPECTED_HELP
    )
    # Counted where it happened: the worker enqueued nothing and says so; the producer did.
    assert m[("kyu_jobs_enqueued_total", ())] == 0
    assert "enqueued by this process" in families["kyu_jobs_enqueued"].documentation
    assert (
        producer.metrics.registry.get_sample_value("kyu_jobs_enqueued_total", {"queue": name}) == 2
    )
    assert m[("kyu_jobs_processed_total", (("status", "completed"),))] == 2
    # Sampled from the servers: the whole queue, whoever enqueued or ran it.
    assert sum(v for (n, _), v in m.items() if n == "kyu_jobs_by_status") == 2


async def test_health_readiness_and_sampled_gauges_follow_redis(
    make_config: Callable[..., Config], throwaway_redis: ThrowawayRedis
) -> None:
    port = free_port()
    queue = Queue(
        make_config(metrics_port=port, redis_url=throwaway_redis.url, metrics_sample_interval=0.1)
    )
    name = queue.config.queue_name

    async def sampled_after_up(up: float) -> set[str]:
        """Names of the sampled gauges scraped once kyu_up reads ``up``."""
        with trio.fail_after(10):
            while True:
                samples = await scrape(port)
                if by_key(samples, name)[("kyu_up", ())] == up:
                    return {s.name for s in samples if s.name in SAMPLED}
                await trio.sleep(0.05)

    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        assert await http_get(port, "/readyz") == (200, "ready\n")
        assert await sampled_after_up(1) == set(SAMPLED)
        throwaway_redis.stop()
        status, body = await http_get(port, "/readyz")
        assert status == 503
        assert f"Redis at 127.0.0.1:{throwaway_redis.port}" in body
        assert (await http_get(port, "/healthz"))[0] == 200
        # No stale numbers while the servers cannot be read: no data, and kyu_up says why.
        assert await sampled_after_up(0) == set()
        throwaway_redis.start()
        with trio.fail_after(10):
            while (await http_get(port, "/readyz"))[0] != 200:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert await sampled_after_up(1) == set(SAMPLED)
        assert (await http_get(port, "/nope"))[0] == 404
        queue.shutdown()


def test_two_queues_in_one_process_do_not_clash() -> None:
    a, b = Queue(Config(queue_name="a")), Queue(Config(queue_name="b"))
    a.metrics.jobs_total.inc()
    assert a.metrics.registry is not b.metrics.registry
    assert a.metrics.registry.get_sample_value("kyu_jobs_enqueued_total", {"queue": "a"}) == 1
    assert b.metrics.registry.get_sample_value("kyu_jobs_enqueued_total", {"queue": "b"}) == 0
