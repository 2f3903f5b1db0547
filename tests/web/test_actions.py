"""The dashboard's actions over HTTP, on real PostgreSQL and Redis: each goes through the
library's `Client`, and a worker serving the queue sees its effect."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from kyu_trio import JobNotFound, JobStatus, Queue
from tests.web.conftest import Web, make_dead, row_ids

pytestmark = pytest.mark.integration


@asynccontextmanager
async def serving(queue: Queue) -> AsyncIterator[None]:
    """The queue served (workers, scheduler, leader) while the block runs."""
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


async def wait_for(queue: Queue, job_id: str, status: JobStatus) -> None:
    with trio.fail_after(15):
        while (await queue.inspect(job_id)).status is not status:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_retry_from_the_job_page_runs_it_again(web: Web, queue: Queue) -> None:
    broken = {"yes": True}

    @queue.handler("flaky")
    async def flaky(payload: Any) -> str:
        if broken["yes"]:
            raise RuntimeError("upstream down")
        return "done"

    [job_id] = await make_dead(queue, 1, "flaky")
    page = await web.get(f"/jobs/{job_id}")
    assert 'data-testid="retry-button"' in page.text
    broken["yes"] = False
    async with serving(queue):
        answer = await web.post(f"/jobs/{job_id}/retry")
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/jobs/{job_id}?msg=retried"
        await wait_for(queue, job_id, JobStatus.COMPLETED)
    page = await web.get(f"/jobs/{job_id}")
    assert 'data-testid="job-status">completed<' in page.text
    assert "&#34;done&#34;" in page.text or "&quot;done&quot;" in page.text  # the result
    outcomes = re.findall(r'data-testid="attempt" data-outcome="(\w+)"', page.text)
    assert outcomes == ["completed", "dead"]  # newest first
    # A completed job cannot be retried: the page says so.
    again = await web.follow(await web.post(f"/jobs/{job_id}/retry"))
    assert "Not retried" in again.text


async def test_cancel_and_delete_one_job(web: Web, queue: Queue) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job_id = await queue.enqueue("ok", 1, scheduled_at=later)
    page = await web.follow(await web.post(f"/jobs/{job_id}/cancel"))
    assert "Job cancelled." in page.text
    assert (await queue.inspect(job_id)).status is JobStatus.CANCELLED

    # Delete asks first (a GET that changes nothing), then deletes on the POST.
    confirm = await web.get(f"/jobs/{job_id}/delete")
    assert 'data-testid="delete-confirm-button"' in confirm.text
    assert (await queue.inspect(job_id)).status is JobStatus.CANCELLED
    answer = await web.post(f"/jobs/{job_id}/delete")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/jobs?")
    with pytest.raises(JobNotFound):
        await queue.inspect(job_id)
    assert (await web.post(f"/jobs/{job_id}/delete")).status_code == 404


async def test_bulk_cancel_of_20_selected(web: Web, queue: Queue) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    ids = [await queue.enqueue("ok", i, scheduled_at=later) for i in range(25)]
    web_page = await web.get("/jobs", {"status": "scheduled"})
    assert len(row_ids(web_page.text)) == 10  # page_size
    chosen = ids[:20]
    confirm = await web.post(
        "/jobs/bulk", {"do": "cancel:selected", "job": chosen, "status": "scheduled"}
    )
    assert confirm.status_code == 200
    assert re.search(r'data-testid="confirm-count">20<', confirm.text)
    for job_id in ids:
        assert (await queue.inspect(job_id)).status is JobStatus.SCHEDULED  # nothing yet
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text)
    form: dict[str, list[str]] = {}
    for name, value in fields:
        if name != "csrf_token":
            form.setdefault(name, []).append(html.unescape(value))
    done = await web.follow(await web.post("/jobs/bulk", form))
    assert "20 jobs cancelled." in done.text
    after = {job_id: (await queue.inspect(job_id)).status for job_id in ids}
    assert [after[i] for i in chosen] == [JobStatus.CANCELLED] * 20
    assert [after[i] for i in ids[20:]] == [JobStatus.SCHEDULED] * 5


async def test_bulk_on_the_whole_page(web: Web, queue: Queue) -> None:
    dead = await make_dead(queue, 12)
    page = await web.get("/jobs", {"status": "dead"})
    shown = row_ids(page.text)
    assert len(shown) == 10
    confirm = await web.post(
        "/jobs/bulk", {"do": "retry:page", "page_job": shown, "status": "dead"}
    )
    assert re.search(r'data-testid="confirm-count">10<', confirm.text)
    done = await web.post(
        "/jobs/bulk",
        {"do": "retry:page", "page_job": shown, "status": "dead", "confirmed": "yes"},
    )
    assert done.headers["location"] == "/jobs?status=dead&msg=bulk_retry&n=10"
    statuses = {i: (await queue.inspect(i)).status for i in dead}
    assert sorted(s.value for s in statuses.values()) == ["dead"] * 2 + ["pending"] * 10


async def test_retry_a_whole_filter(web: Web, queue: Queue) -> None:
    @queue.handler("send_email")
    async def send_email(payload: Any) -> None:
        raise OSError("smtp down")

    mails = await make_dead(queue, 15, "send_email")
    others = await make_dead(queue, 3, "boom")
    confirm = await web.post(
        "/jobs/filter-action", {"action": "retry", "status": "dead", "type": "send_email"}
    )
    assert confirm.status_code == 200
    assert re.search(r'data-testid="confirm-count">15<', confirm.text), confirm.text
    assert "dead jobs of type send_email" in confirm.text
    # A job that dies after the confirmation page is not part of what was confirmed.
    late = await make_dead(queue, 1, "send_email")
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text))
    fields.pop("csrf_token")
    done = await web.follow(await web.post("/jobs/filter-action", fields))
    assert "15 jobs retried." in done.text
    for job_id in mails:
        assert (await queue.inspect(job_id)).status is JobStatus.PENDING
    for job_id in others + late:
        assert (await queue.inspect(job_id)).status is JobStatus.DEAD


async def test_pause_and_resume(web: Web, queue: Queue) -> None:
    name = queue.config.queue_name
    async with serving(queue):
        page = await web.get("/")
        assert 'data-testid="pause-button"' in page.text
        answer = await web.post("/queues/pause", {"queue": name})
        assert answer.status_code == 303
        assert await queue.is_paused()
        page = await web.follow(answer)
        assert f"Queue {name} paused" in page.text
        assert 'data-testid="paused-badge"' in page.text
        assert 'data-testid="resume-button"' in page.text
        # Workers stop claiming: a new job waits.
        job_id = await queue.enqueue("ok", "while paused")
        await trio.sleep(1.0)
        assert (await queue.inspect(job_id)).status is JobStatus.PENDING
        await web.post("/queues/resume", {"queue": name})
        assert not await queue.is_paused()
        await wait_for(queue, job_id, JobStatus.COMPLETED)
        # The overview shows the process serving the queue, and that it leads.
        page = await web.get("/")
        assert page.text.count('data-testid="process-row"') == 1
    assert (await web.post("/queues/pause", {"queue": "kyu:not-shown"})).status_code == 400


async def test_run_a_cron_entry_now(web: Web, queue: Queue) -> None:
    queue.cron("0 0 1 1 *", "ok", {"from": "cron"}, name="new-year")
    async with serving(queue):
        with trio.fail_after(15):
            while 'data-cron="new-year"' not in (page := await web.get("/")).text:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert 'data-testid="cron-run-button"' in page.text
        assert 'data-testid="leader-badge"' in page.text
        answer = await web.post("/cron/run", {"queue": queue.config.queue_name, "name": "new-year"})
        assert answer.status_code == 303
        job_id = re.match(r"/jobs/([0-9a-f-]{36})\?msg=cron_run$", answer.headers["location"])
        assert job_id is not None
        await wait_for(queue, job_id.group(1), JobStatus.COMPLETED)
        missing = await web.post("/cron/run", {"queue": queue.config.queue_name, "name": "nope"})
        assert missing.status_code == 502 and "nope" in missing.text


async def test_jobs_of_other_queues_are_out_of_reach(
    make_web: Callable[..., Web], queue: Queue, make_config: Callable[..., Any]
) -> None:
    other = Queue(make_config(queue_name=queue.config.queue_name + "-other"))
    async with other:
        foreign = await other.enqueue("ok", 1, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    web = make_web()  # shows only the test's queue
    assert (await web.get(f"/jobs/{foreign}")).status_code == 404
    assert (await web.post(f"/jobs/{foreign}/cancel")).status_code == 404
    confirm = await web.post("/jobs/bulk", {"do": "cancel:selected", "job": [foreign]})
    assert re.search(r'data-testid="confirm-count">0<', confirm.text)
    assert (await queue.inspect(foreign)).status is JobStatus.SCHEDULED


async def test_a_whole_filter_stops_at_the_bulk_limit(
    make_web: Callable[..., Web], queue: Queue
) -> None:
    dead = await make_dead(queue, 12)
    web = make_web(bulk_limit=5)
    confirm = await web.post("/jobs/filter-action", {"action": "delete", "status": "dead"})
    # Counted up to one past the limit: "at least 6", and this request acts on 5.
    assert re.search(r'at least <strong data-testid="confirm-count">6<', confirm.text)
    assert "this one on the first 5 of the list" in confirm.text
    assert re.search(r'data-testid="confirm-button">Delete 5<', confirm.text)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text))
    fields.pop("csrf_token")
    done = await web.follow(await web.post("/jobs/filter-action", fields))
    assert "5 jobs deleted; the request stopped before the end of the filter" in done.text
    left = 0
    for job_id in dead:
        try:
            await queue.inspect(job_id)
            left += 1
        except JobNotFound:
            pass
    assert left == 7
