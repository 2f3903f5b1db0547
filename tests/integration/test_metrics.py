"""The metrics endpoint of a serving worker, scraped over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from kyu_trio import Config, Queue, current_job
from tests.conftest import ThrowawayRedis, free_port

pytestmark = pytest.mark.integration


async def http_get(port: int, path: str) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
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
            status, text = await http_get(port, "/metrics")
            queue.shutdown()
    assert status == 200
    m = samples(text)
    assert m[("kyu_jobs_total", ())] == 6
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
    assert m[("kyu_info", (("queue", queue.config.queue_name), ("version", "0.1.0")))] == 1
    assert ("process_resident_memory_bytes", ()) in m


async def test_health_and_readiness_follow_redis(
    make_config: Callable[..., Config], throwaway_redis: ThrowawayRedis
) -> None:
    port = free_port()
    queue = Queue(make_config(metrics_port=port, redis_url=throwaway_redis.url))
    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        assert await http_get(port, "/readyz") == (200, "ready\n")
        throwaway_redis.stop()
        status, body = await http_get(port, "/readyz")
        assert status == 503
        assert f"Redis at 127.0.0.1:{throwaway_redis.port}" in body
        assert (await http_get(port, "/healthz"))[0] == 200
        throwaway_redis.start()
        with trio.fail_after(10):
            while (await http_get(port, "/readyz"))[0] != 200:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert (await http_get(port, "/nope"))[0] == 404
        queue.shutdown()


def test_two_queues_in_one_process_do_not_clash() -> None:
    a, b = Queue(Config(queue_name="a")), Queue(Config(queue_name="b"))
    a.metrics.jobs_total.inc()
    assert a.metrics.registry is not b.metrics.registry
    assert b.metrics.registry.get_sample_value("kyu_jobs_total") == 0
