"""Tests of ``app.py``: its own module-level queue, in memory, then on real servers.

Run with ``pytest examples/testing_app`` (pytest-trio runs the async tests; kyu-trio's
pytest plugin provides ``kyu_config``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from app import mailer, queue

from kyu_trio import Config, JobStatus, Queue
from kyu_trio.testing import drain, in_memory

pytestmark = pytest.mark.trio


@pytest.fixture
def app_queue() -> Iterator[Queue]:
    """The app's queue on in-memory adapters, and a mailer that works."""
    mailer.sent.clear()
    mailer.down = False
    with in_memory(queue):
        yield queue


async def test_signup_sends_a_welcome_email(app_queue: Queue) -> None:
    async with app_queue:
        await app_queue.enqueue("signup", json.dumps({"email": "ada@example.com"}))
        ran = await drain(app_queue)  # the signup, then the email it enqueued
    assert [job.job_type for job in ran] == ["signup", "send_welcome"]
    assert mailer.sent == ["ada@example.com: Welcome!"]


async def test_the_email_is_retried_once_the_mail_server_is_back(
    app_queue: Queue, autojump_clock: trio.testing.MockClock
) -> None:
    mailer.down = True
    async with app_queue:
        job_id = await app_queue.enqueue("send_welcome", json.dumps({"email": "bo@example.com"}))
        await drain(app_queue)
        job = await app_queue.inspect(job_id)
        assert job.status is JobStatus.FAILED and "unreachable" in (job.error_message or "")
        mailer.down = False
        await trio.sleep(app_queue.config.max_backoff)  # MockClock: no real wait
        ran = await drain(app_queue)
        assert [(j.job_type, j.attempt) for j in ran] == [("send_welcome", 2)]
        assert (await app_queue.inspect(job_id)).status is JobStatus.COMPLETED
    assert mailer.sent == ["bo@example.com: Welcome!"]


@pytest.fixture
def real_app_queue(kyu_config: Config) -> Iterator[Queue]:
    """The app's queue on throwaway PostgreSQL and Redis servers (kyu-trio's plugin), in a
    database and under a queue name of this test's own."""
    mailer.sent.clear()
    mailer.down = False
    saved = queue.config
    queue.config = kyu_config
    try:
        yield queue
    finally:
        queue.config = saved


async def test_signup_on_real_servers(real_app_queue: Queue) -> None:
    async with real_app_queue:
        await real_app_queue.enqueue("signup", json.dumps({"email": "cy@example.com"}))
        ran = await drain(real_app_queue)
        assert [job.job_type for job in ran] == ["signup", "send_welcome"]
        stats = await real_app_queue.stats()
    assert stats.counts.get(JobStatus.COMPLETED) == 2
    assert mailer.sent == ["cy@example.com: Welcome!"]


async def test_a_handler_alone(kyu_memory_queue: Queue) -> None:
    """A queue of the test's own (kyu-trio's plugin), for a handler on its own."""
    seen: list[str] = []

    def record(payload: str) -> None:  # a plain def: it runs in a worker thread
        seen.append(payload)

    kyu_memory_queue.register("record", record)
    async with kyu_memory_queue:
        await kyu_memory_queue.enqueue("record", "hi")
        await drain(kyu_memory_queue)
    assert seen == ["hi"]
