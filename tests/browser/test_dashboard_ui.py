"""The web dashboard in a real browser (issue 15): Debian's chromium driven by Playwright,
against the dashboard served by Hypercorn on this run's PostgreSQL and Redis, with
workers serving two of its queues in the same server loop.

One seeded world and one served app for the module; each test reads it, or acts on jobs
and a queue that no other test counts:

- ``emails-…``, served, with a cron entry: an hour of history (completions and bounces,
  backdated so that the chart shows activity); the CSRF test's job;
- ``reports-…``, served by nobody: jobs in known states (the overview's counts, the
  filter by type, a traceback to read);
- ``imports-…``, served: 25 scheduled jobs to select and cancel, a job whose type is
  ``<script>alert(1)</script>``, and the queue the retry and pause tests act on.

The two served queues run in the app's lifespan (``serve_queues``), in the server's trio
loop; the tests enqueue and check with a sync `Client` between browser calls.

With ``KYU_UPDATE_SCREENSHOTS=1`` the overview, list and job tests also write the docs'
screenshots (``docs/_static/dashboard/*.png``); otherwise they go to a temporary directory,
so that a CI run never rewrites tracked files.
"""

from __future__ import annotations

import base64
import functools
import html
import math
import os
import random
import re
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import attrs
import psycopg
import pytest
import redis
import trio

pytest.importorskip("starlette", reason="the dashboard extra is missing: pip install -e '.[dev]'")
pytest.importorskip("playwright", reason="playwright is missing: pip install -e '.[dev]'")

from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    Response,
    expect,
)
from playwright.sync_api import Error as PlaywrightError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from kyu_trio import Client, Config, EnqueueRequest, JobStatus, Queue, current_job, serve_queues
from kyu_trio.dashboard import BasicAuth, BearerAuth, create_app
from tests.browser.conftest import VIEWPORT, ASGIApp, serve_asgi, with_tasks
from tests.web.conftest import make_dead

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert(1)</script>"
#: The hostile job's error: markup that would run if it were not escaped.
HOSTILE_ERROR = f"{HOSTILE} & <img src=x onerror=alert(2)>"
#: Where the docs' screenshots go (only with KYU_UPDATE_SCREENSHOTS=1).
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "_static" / "dashboard"
#: The longest a job may take to reach a state once a worker can run it (s).
SETTLE = 15.0
#: How long the pause test watches a paused queue keep a job pending (s): longer than a
#: fetcher's pause poll (1 s) and the time a worker takes to pick a ready job up.
PAUSED_WATCH = 2.5
PASSWORD = "correct horse battery staple"
CHART_TITLE = re.compile(r"\d\d:\d\d UTC: ([\d,]+) completed, ([\d,]+) failed")
TOKEN = "t0ken-" + "x" * 26


# ---- the handlers ---------------------------------------------------------------------


class MailboxUnavailable(Exception):
    """What a mail server says about an address that does not exist."""


def emails_queue(config: Config) -> Queue:
    """The ``emails`` queue with its handlers and cron entry. The seeding run and the
    served worker each build their own (a Queue belongs to one trio loop)."""
    queue = Queue(config)

    @queue.handler("send_email")
    async def send_email(payload: dict[str, Any]) -> dict[str, str]:
        if payload.get("bounce"):
            raise MailboxUnavailable(f"550 5.1.1 <{payload['to']}>: mailbox unavailable")
        return {"message_id": f"<{current_job().id[:8]}@mail.example.com>"}

    @queue.handler("weekly_digest")
    async def weekly_digest(payload: Any) -> None:
        return None

    # Mondays at 7: it never fires during a test run, in practice (it would add a job).
    queue.cron("0 7 * * 1", "weekly_digest", {"edition": "monday"}, name="weekly-digest")
    return queue


def read_sales(month: str, region: str | None) -> list[str]:
    if region is None:
        raise ValueError(f"column 'region' is missing from sales-{month}.csv")
    return [region]


def build_report(payload: dict[str, Any]) -> dict[str, Any]:
    rows = read_sales(payload["month"], payload.get("region"))
    return {"rows": len(rows), "report": payload["report"]}


def reports_queue(config: Config) -> Queue:
    queue = Queue(config)

    @queue.handler("generate_report")
    async def generate_report(payload: dict[str, Any]) -> dict[str, Any]:
        return build_report(payload)

    @queue.handler("export_csv")
    async def export_csv(payload: dict[str, Any]) -> None:
        raise PermissionError(f"cannot write /exports/{payload['file']}: read-only file system")

    return queue


def imports_queue(config: Config) -> Queue:
    queue = Queue(config)

    @queue.handler("import_contacts")
    async def import_contacts(payload: Any) -> None:
        return None

    @queue.handler(HOSTILE)
    async def hostile(payload: Any) -> None:
        raise RuntimeError(HOSTILE_ERROR)

    @queue.handler("sync_contacts")
    async def sync_contacts(payload: dict[str, Any]) -> dict[str, int]:
        # Its first run fails: the retry test retries it from its page, and it completes.
        if current_job().attempt == 1:
            raise ConnectionError("CRM API timed out after 30 s")
        return {"synced": 42}

    return queue


# ---- the world ------------------------------------------------------------------------


@attrs.frozen
class World:
    """The seeded queues and the ids the tests look for."""

    pg_dsn: str
    redis_url: str
    emails: Config
    reports: Config
    imports: Config
    #: reports: dead generate_report (with a traceback), dead export_csv, the failed one.
    dead_reports: list[str]
    dead_exports: list[str]
    failed_export: str
    #: imports: the 25 scheduled jobs, and the dead one of type HOSTILE.
    scheduled_imports: list[str]
    hostile: str

    @property
    def queues(self) -> list[str]:
        return [c.queue_name for c in (self.emails, self.reports, self.imports)]

    def app(self, **settings: Any) -> Starlette:
        """A dashboard of the three queues (settings on top of these)."""
        return create_app(
            dsn=self.pg_dsn,
            redis_url=self.redis_url,
            queues=self.queues,
            refresh_interval=0,  # no live swap of the numbers under a test's clicks
            **settings,
        )


#: The expected counts of the reports queue, as seeded.
REPORT_COUNTS = {
    "pending": 5,
    "scheduled": 4,
    "running": 0,
    "failed": 1,
    "completed": 3,
    "dead": 5,
    "cancelled": 1,
}


def _config(pg_dsn: str, redis_url: str, name: str) -> Config:
    return Config(
        dsn=pg_dsn,
        redis_url=redis_url,
        queue_name=name,
        metrics_port=0,
        workers=8,
        shutdown_grace=2.0,
        scheduler_interval=0.2,
        heartbeat_interval=0.5,
        leader_interval=0.5,
    )


#: How far back the emails history goes (minutes): inside the chart's hour, even a minute
#: after seeding.
HISTORY_MINUTES = 57


def _minute_weights() -> list[float]:
    """Activity per minute ago (1 to `HISTORY_MINUTES`): busy and quiet stretches, a burst."""
    return [
        2.0 + 3.0 * math.sin(m / 7.0) ** 2 + (6.0 if 38 <= m <= 41 else 0.0)
        for m in range(1, HISTORY_MINUTES + 1)
    ]


async def _seed_queues(world: dict[str, Any]) -> None:
    emails: Config = world["emails"]
    reports: Config = world["reports"]
    imports: Config = world["imports"]
    later = datetime.now(UTC) + timedelta(hours=1)

    queue = emails_queue(emails)
    async with queue:
        sent = [
            EnqueueRequest("send_email", {"to": f"user{i}@example.com", "template": "welcome"})
            for i in range(240)
        ]
        bounced = [
            EnqueueRequest(
                "send_email", {"to": f"nobody{i}@example.org", "bounce": True}, max_retries=0
            )
            for i in range(9)
        ]
        world["emails_done"] = await queue.enqueue_many(sent)
        world["emails_bounced"] = await queue.enqueue_many(bounced)
        summary = await queue.run_once()
        assert summary.completed == 240, summary

    queue = imports_queue(imports)
    async with queue:
        world["scheduled_imports"] = await queue.enqueue_many(
            [
                EnqueueRequest(
                    "import_contacts",
                    {"file": f"batch-{i:02}.csv"},
                    scheduled_at=later + timedelta(minutes=i),
                )
                for i in range(25)
            ]
        )
        [world["hostile"]] = await make_dead(queue, 1, HOSTILE, "x")

    # The reports last: the newest jobs, on top of the list (and of its screenshot).
    queue = reports_queue(reports)
    async with queue:
        for month, region in (("2026-01", "emea"), ("2026-02", "apac"), ("2026-03", "amer")):
            await queue.enqueue(
                "generate_report", {"report": "sales", "month": month, "region": region}
            )
        await queue.run_once()
        world["dead_reports"] = [
            await queue.enqueue(
                "generate_report", {"report": "sales", "month": m, "region": None}, max_retries=0
            )
            for m in ("2026-04", "2026-05")
        ]
        world["dead_exports"] = [
            await queue.enqueue("export_csv", {"file": f"contacts-{i}.csv"}, max_retries=0)
            for i in range(3)
        ]
        world["failed_export"] = await queue.enqueue(
            "export_csv", {"file": "orders.csv"}, max_retries=5
        )
        await queue.run_once()
        for hours in range(1, 5):
            await queue.enqueue(
                "generate_report",
                {"report": "forecast", "month": "2026-06", "region": "emea"},
                scheduled_at=later + timedelta(hours=hours),
            )
        for i in range(5):
            await queue.enqueue(
                "generate_report", {"report": "stock", "month": "2026-06", "region": f"r{i}"}
            )
        cancelled = await queue.enqueue("generate_report", {"report": "old"}, scheduled_at=later)
        assert await queue.cancel_job(cancelled)


def _backdate_history(pg_dsn: str, done: list[str], bounced: list[str]) -> None:
    """Spread the emails queue's finished jobs over the last hour, as if it had been
    working all along: the chart then shows an hour of activity."""
    rng = random.Random(15)
    weights = _minute_weights()
    minutes = range(1, HISTORY_MINUTES + 1)
    ago = [60.0 * rng.choices(minutes, weights)[0] + rng.uniform(0, 59) for _ in done]
    ago += [60.0 * rng.choice(minutes) + rng.uniform(0, 59) for _ in bounced]
    ids = done + bounced
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            """
            UPDATE kyu_jobs j SET
                created_at = now() - make_interval(secs => d.ago + 1.5),
                scheduled_at = now() - make_interval(secs => d.ago + 1.5),
                locked_at = now() - make_interval(secs => d.ago + 0.4),
                heartbeat_at = now() - make_interval(secs => d.ago + 0.4),
                completed_at = CASE WHEN j.status = 'completed'
                                    THEN now() - make_interval(secs => d.ago) END,
                updated_at = now() - make_interval(secs => d.ago)
            FROM unnest(%s::uuid[], %s::float8[]) AS d(id, ago)
            WHERE j.id = d.id
            """,
            (ids, ago),
        )
        conn.execute(
            """
            UPDATE kyu_attempts a SET
                started_at = now() - make_interval(secs => d.ago + 0.4),
                finished_at = now() - make_interval(secs => d.ago)
            FROM unnest(%s::uuid[], %s::float8[]) AS d(id, ago)
            WHERE a.job_id = d.id
            """,
            (ids, ago),
        )
        conn.execute("ANALYZE kyu_jobs")


@pytest.fixture(scope="module")
def world(pg_dsn: str, redis_url: str) -> Iterator[World]:
    """The three queues, seeded (their Redis keys deleted at the end)."""
    tag = uuid.uuid4().hex[:4]
    names = {part: f"{part}-{tag}" for part in ("emails", "reports", "imports")}
    seeded: dict[str, Any] = {
        part: _config(pg_dsn, redis_url, name) for part, name in names.items()
    }
    try:
        trio.run(_seed_queues, seeded)
        _backdate_history(pg_dsn, seeded.pop("emails_done"), seeded.pop("emails_bounced"))
        yield World(pg_dsn=pg_dsn, redis_url=redis_url, **seeded)
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            client.delete(*names.values(), *(f"{n}:~epoch" for n in names.values()))
        finally:
            client.close()


@pytest.fixture(scope="module")
def clients(world: World) -> Iterator[dict[str, Client]]:
    """A sync `Client` per queue, for the tests' own enqueues and checks."""
    made = {
        "emails": Client(world.emails),
        "reports": Client(world.reports),
        "imports": Client(world.imports),
    }
    try:
        yield made
    finally:
        for client in made.values():
            client.close()


def _wait_for_workers(pg_dsn: str, emails: str, imports: str) -> None:
    """Until the worker of each queue has recorded itself and leads its maintenance, and
    the cron entry of emails is registered: what the overview shows of them."""
    deadline = time.monotonic() + SETTLE
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM kyu_processes WHERE queue = ANY(%(q)s)),"
                " (SELECT count(*) FROM kyu_leaders"
                "  WHERE queue = ANY(%(q)s) AND expires_at > now()),"
                " (SELECT count(*) FROM kyu_cron WHERE queue = %(emails)s)",
                {"q": [emails, imports], "emails": emails},
            ).fetchone()
            if row == (2, 2, 1):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the workers are not up: {row}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[str]:
    """The dashboard of the three queues, with the workers of ``emails`` and ``imports``
    beside it in the server's trio loop; its base URL."""
    workers = functools.partial(
        serve_queues, emails_queue(world.emails), imports_queue(world.imports)
    )
    with serve_asgi(with_tasks(world.app(), workers)) as url:
        _wait_for_workers(world.pg_dsn, world.emails.queue_name, world.imports.queue_name)
        yield url


@pytest.fixture
def page(page: Page) -> Iterator[Page]:
    """The browser page, failing the test if any dialog (``alert(...)``) opens."""
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page
    assert dialogs == [], f"a dialog opened: {dialogs}"


# ---- helpers --------------------------------------------------------------------------


def screenshot(page: Page, name: str, tmp_path: Path, *, full_page: bool = False) -> None:
    """Save the page as the docs' ``name`` with KYU_UPDATE_SCREENSHOTS=1, else in
    ``tmp_path`` (so the path is exercised either way); check it is a real picture."""
    directory = SHOTS if os.environ.get("KYU_UPDATE_SCREENSHOTS") == "1" else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    # The mouse away from every link and button: no hover state in the picture.
    page.mouse.move(0, 0)
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == VIEWPORT["width"]
    assert height >= VIEWPORT["height"] if full_page else height == VIEWPORT["height"]


def queue_section(page: Page, queue: str) -> Locator:
    return page.locator(f'[data-testid="queue"][data-queue="{queue}"]')


def rows(page: Page) -> Locator:
    return page.get_by_test_id("job-row")


def row_ids(page: Page) -> list[str]:
    return [r.get_attribute("data-job-id") or "" for r in rows(page).all()]


def reload_until(page: Page, locator: Locator, text: str, timeout: float = SETTLE) -> None:
    """Reload the page until ``locator`` has ``text`` (a page that does not update
    itself); each round waits up to half a second for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            expect(locator).to_have_text(text, timeout=500)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        page.reload()


# ---- 1. the overview ------------------------------------------------------------------


def test_overview_shows_the_counts(page: Page, server: str, world: World, tmp_path: Path) -> None:
    page.goto(server + "/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_test_id("queue")).to_have_count(3)
    reports = queue_section(page, world.reports.queue_name)
    for status, n in REPORT_COUNTS.items():
        count = reports.get_by_test_id(f"count-{status}")
        expect(count).to_have_attribute("data-exact", "yes")
        expect(count.locator(".n")).to_have_text(str(n))
        expect(count.locator(".label")).to_have_text(status)
    # Nobody serves reports; emails has its worker, the leader, and the cron entry.
    expect(reports.get_by_test_id("process-count")).to_have_text("0")
    expect(reports.get_by_test_id("leader")).to_have_text("none")
    emails = queue_section(page, world.emails.queue_name)
    expect(emails.get_by_test_id("process-count")).to_have_text("1")
    expect(emails.get_by_test_id("process-row")).to_have_count(1)
    expect(emails.get_by_test_id("leader-badge")).to_be_visible()
    expect(emails.get_by_test_id("cron-row")).to_have_attribute("data-cron", "weekly-digest")
    expect(emails.get_by_test_id("count-completed").locator(".n")).to_have_text("240")
    expect(emails.get_by_test_id("count-dead").locator(".n")).to_have_text("9")
    # The chart: an hour of activity, the bounces among it; each bar's tooltip (its
    # <title>) gives its numbers.
    chart = emails.get_by_test_id("throughput-chart")
    expect(chart).to_be_visible()
    bars = [CHART_TITLE.fullmatch(t) for t in chart.locator("title").all_text_contents()]
    assert len(bars) == 60 and all(bars), bars
    assert sum(int(b[1].replace(",", "")) for b in bars if b) == 240
    assert sum(int(b[2].replace(",", "")) for b in bars if b) == 9
    assert chart.locator("rect.bar-done").count() >= HISTORY_MINUTES // 2
    screenshot(page, "overview.png", tmp_path, full_page=True)

    # A count is a link to those jobs.
    reports.get_by_test_id("count-dead").click()
    expect(page).to_have_url(re.compile(r"/jobs\?.*status=dead"))
    expect(rows(page)).to_have_count(REPORT_COUNTS["dead"])
    assert set(row_ids(page)) == set(world.dead_reports + world.dead_exports)


# ---- 2. the list, filtered like a user ------------------------------------------------


def test_filter_dead_jobs_by_type(page: Page, server: str, world: World, tmp_path: Path) -> None:
    page.goto(server + "/")
    page.get_by_test_id("nav-jobs").click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    page.get_by_test_id("filter-queue").select_option(world.reports.queue_name)
    page.get_by_test_id("filter-submit").click()
    expect(rows(page)).to_have_count(sum(REPORT_COUNTS.values()))
    screenshot(page, "jobs.png", tmp_path, full_page=True)

    page.get_by_test_id("filter-status").select_option("dead")
    page.get_by_test_id("filter-type").fill("export_csv")
    page.get_by_test_id("filter-submit").click()
    expect(page).to_have_url(re.compile(r"status=dead&type=export_csv"))
    expect(rows(page)).to_have_count(3)
    assert sorted(row_ids(page)) == sorted(world.dead_exports)
    assert world.failed_export not in row_ids(page)  # of that type, but not dead
    for row in rows(page).all():
        expect(row).to_have_attribute("data-status", "dead")
        expect(row.get_by_test_id("job-type")).to_have_text("export_csv")
    expect(page.get_by_test_id("list-summary")).to_contain_text("3 dead jobs of type export_csv")
    # The form shows the filter it applied.
    expect(page.get_by_test_id("filter-status")).to_have_value("dead")
    expect(page.get_by_test_id("filter-type")).to_have_value("export_csv")

    # Another type; then another queue.
    page.get_by_test_id("filter-type").fill("generate_report")
    page.get_by_test_id("filter-submit").click()
    expect(rows(page)).to_have_count(2)
    assert sorted(row_ids(page)) == sorted(world.dead_reports)
    page.get_by_test_id("filter-queue").select_option(world.emails.queue_name)
    page.get_by_test_id("filter-submit").click()
    expect(page.get_by_test_id("list-summary")).to_contain_text("No dead jobs")
    expect(rows(page)).to_have_count(0)


# ---- 3. a job and its traceback -------------------------------------------------------


def test_open_a_job_and_read_its_traceback(
    page: Page, server: str, world: World, tmp_path: Path
) -> None:
    page.goto(server + f"/jobs?queue={world.reports.queue_name}&status=dead&type=generate_report")
    expect(rows(page)).to_have_count(2)
    first = rows(page).first
    job_id = first.get_attribute("data-job-id")
    first.get_by_test_id("job-link").click()
    expect(page).to_have_url(f"{server}/jobs/{job_id}")
    expect(page.get_by_test_id("job-type")).to_have_text("generate_report")
    expect(page.get_by_test_id("job-status")).to_have_text("dead")
    expect(page.get_by_test_id("job-id")).to_have_text(job_id or "")
    error = "ValueError: column 'region' is missing from sales-2026-0"
    expect(page.get_by_test_id("job-error")).to_contain_text(error)
    run = page.get_by_test_id("attempt")
    expect(run).to_have_count(1)
    expect(run).to_have_attribute("data-outcome", "dead")
    traceback = run.get_by_test_id("traceback")
    expect(traceback).to_be_visible()  # the last run's traceback is open
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    # The frames that led there, down to the line that raised.
    expect(traceback).to_contain_text("in build_report")
    expect(traceback).to_contain_text("in read_sales")
    expect(traceback).to_contain_text(error)
    expect(page.get_by_test_id("timeline-event")).to_have_count(3)
    expect(page.get_by_test_id("payload-hidden")).to_be_visible()
    screenshot(page, "job.png", tmp_path, full_page=True)


# ---- 4. retry, and the worker runs it -------------------------------------------------


def test_retry_a_dead_job_and_see_it_complete(
    page: Page, server: str, clients: dict[str, Client]
) -> None:
    job_id = clients["imports"].enqueue("sync_contacts", {"since": "2026-06-01"}, max_retries=0)
    page.goto(f"{server}/jobs/{job_id}")
    status = page.get_by_test_id("job-status")
    reload_until(page, status, "dead")  # its first run fails
    expect(page.get_by_test_id("traceback")).to_contain_text(
        "ConnectionError: CRM API timed out after 30 s"
    )

    page.get_by_test_id("retry-button").click()
    expect(page.get_by_test_id("flash")).to_have_text("Job retried: it is pending again.")
    reload_until(page, status, "completed")
    outcomes = page.get_by_test_id("attempt")
    expect(outcomes).to_have_count(2)
    expect(outcomes.nth(0)).to_have_attribute("data-outcome", "completed")  # newest first
    expect(outcomes.nth(1)).to_have_attribute("data-outcome", "dead")
    expect(page.get_by_test_id("result")).to_contain_text('"synced": 42')
    expect(page.get_by_test_id("retry-button")).to_have_count(0)
    job = clients["imports"].inspect(job_id)
    assert job.status is JobStatus.COMPLETED and job.result == {"synced": 42}


# ---- 5. select 20 and cancel them -----------------------------------------------------


def test_select_20_jobs_and_cancel_them(
    page: Page, server: str, world: World, clients: dict[str, Client]
) -> None:
    page.goto(server + "/jobs")
    page.get_by_test_id("filter-queue").select_option(world.imports.queue_name)
    page.get_by_test_id("filter-status").select_option("scheduled")
    page.get_by_test_id("filter-submit").click()
    expect(rows(page)).to_have_count(25)
    checks = page.get_by_test_id("job-check")
    chosen = []
    for i in range(20):
        checks.nth(i).check()
        chosen.append(rows(page).nth(i).get_attribute("data-job-id"))
    assert len(set(chosen)) == 20 and set(chosen) <= set(world.scheduled_imports)
    page.get_by_test_id("bulk-cancel-selected").click()

    # The confirmation step: nothing is cancelled before it.
    expect(page.get_by_test_id("confirm-count")).to_have_text("20")
    expect(page.get_by_test_id("confirm-button")).to_have_text("Cancel 20")
    assert clients["imports"].inspect(chosen[0]).status is JobStatus.SCHEDULED
    page.get_by_test_id("confirm-button").click()

    expect(page.get_by_test_id("flash")).to_have_text("20 jobs cancelled.")
    expect(rows(page)).to_have_count(5)  # the filter's page again: the other 5
    left = set(world.scheduled_imports) - set(chosen)
    assert set(row_ids(page)) == left
    for job_id in world.scheduled_imports:
        expected = JobStatus.CANCELLED if job_id in chosen else JobStatus.SCHEDULED
        assert clients["imports"].inspect(job_id).status is expected, job_id

    page.get_by_test_id("filter-status").select_option("cancelled")
    page.get_by_test_id("filter-submit").click()
    expect(rows(page)).to_have_count(20)
    assert set(row_ids(page)) == set(chosen)
    for row in rows(page).all():
        expect(row).to_have_attribute("data-status", "cancelled")


# ---- 6. pause a queue -----------------------------------------------------------------


def test_pause_a_queue_and_workers_stop_claiming(
    page: Page, server: str, world: World, clients: dict[str, Client]
) -> None:
    name = world.imports.queue_name
    client = clients["imports"]
    page.goto(server + "/")
    section = queue_section(page, name)
    expect(section.get_by_test_id("active-badge")).to_be_visible()
    try:
        section.get_by_test_id("pause-button").click()
        expect(page.get_by_test_id("flash")).to_have_text(
            f"Queue {name} paused: running jobs finish, no new job starts."
        )
        expect(section.get_by_test_id("paused-badge")).to_be_visible()
        expect(section.get_by_test_id("resume-button")).to_be_visible()
        assert client.is_paused()

        job_id = client.enqueue("import_contacts", {"file": "late.csv"})
        time.sleep(PAUSED_WATCH)  # the worker is up and idle: only the pause holds it
        job = client.inspect(job_id)
        assert (job.status, job.attempt) == (JobStatus.PENDING, 0)  # never even claimed
        page.goto(f"{server}/jobs/{job_id}")
        expect(page.get_by_test_id("job-status")).to_have_text("pending")

        page.get_by_test_id("nav-overview").click()
        section.get_by_test_id("resume-button").click()
        expect(page.get_by_test_id("flash")).to_have_text(f"Queue {name} resumed.")
        expect(section.get_by_test_id("active-badge")).to_be_visible()
        assert not client.is_paused()
    finally:
        client.resume()  # whatever happened, leave the worker working for the others
    page.goto(f"{server}/jobs/{job_id}")
    reload_until(page, page.get_by_test_id("job-status"), "completed")


# ---- 7. read-only ---------------------------------------------------------------------


ACTION_BUTTONS = re.compile(r"retry|cancel|delete|pause|resume|run now", re.I)


def test_read_only_mode_shows_no_action(
    page: Page,
    server: str,
    world: World,
    live_server: Callable[[ASGIApp], str],
) -> None:
    # What the full dashboard offers on these pages...
    dead = world.dead_reports[0]
    paths = ["/", f"/jobs?queue={world.reports.queue_name}&status=dead", f"/jobs/{dead}"]
    offered = []
    for path in paths:
        page.goto(server + path)
        offered.append(page.locator("form[method=post]").count())
        assert page.get_by_role("button", name=ACTION_BUTTONS).count() > 0, path
    assert all(offered), offered

    # ... and the read-only one: the same content, no action anywhere.
    url = live_server(world.app(read_only=True))
    for path in [*paths, f"/jobs/{dead}/delete"]:
        page.goto(url + path)
        expect(page.get_by_test_id("read-only-badge")).to_be_visible()
        expect(page.get_by_test_id("banner-info")).to_contain_text("Read-only dashboard")
        expect(page.locator("form[method=post]")).to_have_count(0)
        expect(page.locator("input[type=checkbox]")).to_have_count(0)
        expect(page.get_by_role("button", name=ACTION_BUTTONS)).to_have_count(0)
        expect(page.locator("[data-testid$='-button'], [data-testid^='bulk-']")).to_have_count(0)
    # The job page shows what it shows, less the actions.
    expect(page.get_by_test_id("job-status")).to_have_text("dead")
    expect(page.get_by_test_id("traceback")).to_be_visible()
    page.goto(url + "/")
    expect(page.get_by_test_id("cron-row")).to_have_count(1)  # listed, without "Run now"
    # A POST anyway (the form it would have had): refused.
    answer = page.request.post(
        url + "/queues/pause", form={"queue": world.emails.queue_name}, max_redirects=0
    )
    assert answer.status == 403 and "read-only" in answer.text()


# ---- 8. credentials -------------------------------------------------------------------


def statuses_of(page: Page, url: str) -> list[int]:
    """Open ``url``: the statuses of the answers to it (a challenge may come first)."""
    statuses: list[int] = []

    def on_response(response: Response) -> None:
        if response.url == url:
            statuses.append(response.status)

    page.on("response", on_response)
    try:
        page.goto(url)
    except PlaywrightError as exc:
        # Without credentials, Chromium gives up on the challenge and shows no page.
        if "ERR_INVALID_AUTH_CREDENTIALS" not in exc.message:
            raise
    finally:
        page.remove_listener("response", on_response)
    return statuses


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_wrong_credentials_get_401(
    browser: Browser, world: World, live_server: Callable[[ASGIApp], str]
) -> None:
    url = live_server(world.app(auth=BasicAuth("ops", PASSWORD))) + "/"
    contexts: list[BrowserContext] = []

    def new_page(**options: Any) -> Page:
        contexts.append(browser.new_context(viewport=VIEWPORT, **options))
        return contexts[-1].new_page()

    try:
        # None, and a wrong password: the browser's credentials, sent on the challenge.
        page = new_page()
        assert statuses_of(page, url) == [401]
        expect(page.get_by_test_id("queue")).to_have_count(0)
        answer = page.request.get(url)
        assert answer.status == 401 and "401 Unauthorized" in answer.text()
        assert answer.headers["www-authenticate"].startswith("Basic realm=")
        wrong = new_page(http_credentials={"username": "ops", "password": "wrong"})
        assert set(statuses_of(wrong, url)) == {401}
        expect(wrong.get_by_test_id("queue")).to_have_count(0)
        # The right password of a wrong user, the wrong scheme: the header as sent.
        for header in (basic("eve", PASSWORD), "Bearer " + PASSWORD):
            assert page.request.get(url, headers={"Authorization": header}).status == 401
        assert page.request.get(url, headers={"Authorization": basic("ops", PASSWORD)}).ok
        right = new_page(http_credentials={"username": "ops", "password": PASSWORD})
        assert statuses_of(right, url)[-1] == 200
        expect(right.get_by_test_id("queue")).to_have_count(3)
        # The stylesheet came with the credentials too.
        display = right.locator("header.top").evaluate("e => getComputedStyle(e).display")
        assert display == "flex"

        # A bearer token, as a proxy or a script in front of the dashboard sends it.
        jobs = live_server(world.app(auth=BearerAuth(TOKEN))) + "/jobs"
        page = new_page()
        for header, expected in (
            (None, 401),
            ("Bearer " + TOKEN[:-1] + "y", 401),
            (basic("ops", TOKEN), 401),
            ("Bearer " + TOKEN, 200),
        ):
            page.set_extra_http_headers({"Authorization": header} if header else {})
            assert statuses_of(page, jobs) == [expected], header
            if expected == 200:
                expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
            else:
                expect(page.get_by_role("heading", name="Jobs")).to_have_count(0)
    finally:
        for context in contexts:
            context.close()


# ---- 9. CSRF --------------------------------------------------------------------------


def attacker_app(target: str, fields: dict[str, str]) -> Starlette:
    """Another site (another port of 127.0.0.1: the same *site* for cookies, so the
    session cookie goes along) with a form that posts to the dashboard."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(
            f'<!doctype html><form method="post" action="{html.escape(target)}">{inputs}'
            '<button type="submit">Win a prize</button></form>'
        )

    return Starlette(routes=[Route("/", index)])


def test_a_post_without_the_csrf_token_is_refused(
    page: Page,
    browser: Browser,
    server: str,
    world: World,
    clients: dict[str, Client],
    live_server: Callable[[ASGIApp], str],
) -> None:
    client = clients["emails"]
    name = world.emails.queue_name
    job_id = client.enqueue(
        "send_email", {"to": "ada@example.com"}, scheduled_at=datetime.now(UTC) + timedelta(days=1)
    )
    page.goto(f"{server}/jobs/{job_id}")  # the session cookie, and forms with the token
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token is not None and len(token) == 64
    cancel, pause = f"{server}/jobs/{job_id}/cancel", f"{server}/queues/pause"

    # The page's own session, without the token: from the request API, and from a script
    # of the page (fetch() sends the cookie and a same-origin Origin).
    for target, form in ((cancel, {}), (pause, {"queue": name})):
        answer = page.request.post(target, form=form, max_redirects=0)
        assert answer.status == 403, answer.text()
        assert "anti-forgery token is missing" in answer.text()
    status = page.evaluate(
        """async ([url, queue]) => {
            const r = await fetch(url, {method: "POST", body: new URLSearchParams({queue})});
            return r.status;
        }""",
        [pause, name],
    )
    assert status == 403
    # Another browser's session (its own cookie) with this page's token: refused too.
    stranger = browser.new_context()
    try:
        stranger.new_page().goto(server + "/")
        assert [c["name"] for c in stranger.cookies()] == ["kyu_dashboard_session"]
        answer = stranger.request.post(pause, form={"queue": name, "csrf_token": token})
        assert answer.status == 403 and "token is missing or wrong" in answer.text()
    finally:
        stranger.close()
    # Another site's form, even with the right token (were it ever leaked): the cookie
    # goes along, the Origin gives it away.
    evil = live_server(attacker_app(pause, {"queue": name, "csrf_token": token}))
    page.goto(evil + "/")
    with page.expect_response(pause) as refused:
        page.get_by_role("button", name="Win a prize").click()
    assert refused.value.status == 403
    expect(page.locator("body")).to_contain_text("comes from another site")

    assert client.inspect(job_id).status is JobStatus.SCHEDULED
    assert not client.is_paused()

    # The same request with the page's token goes through: it was the token.
    page.goto(f"{server}/jobs/{job_id}")
    answer = page.request.post(cancel, form={"csrf_token": token}, max_redirects=0)
    assert answer.status == 303, answer.text()
    assert client.inspect(job_id).status is JobStatus.CANCELLED


# ---- 10. hostile text -----------------------------------------------------------------


def test_a_hostile_job_type_is_shown_as_text(page: Page, server: str, world: World) -> None:
    """Escaping, seen in the browser: the text is on the page as typed, and no element
    came of it. (No dialog either, though the Content-Security-Policy would block an
    inline script anyway: the text assertions are what prove the escaping.)"""
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text))
    injected = "script:not([src]), img[src=x], [onerror]"

    # In the list, and in the filter that names it.
    page.goto(f"{server}/jobs?queue={world.imports.queue_name}&status=dead")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).get_by_test_id("job-type")).to_have_text(HOSTILE)
    expect(rows(page).locator(".error-cell")).to_have_text(f"RuntimeError: {HOSTILE_ERROR}")
    page.get_by_test_id("filter-type").fill(HOSTILE)
    page.get_by_test_id("filter-submit").click()
    expect(rows(page)).to_have_count(1)
    expect(page.get_by_test_id("list-summary")).to_contain_text(f"of type {HOSTILE}")
    expect(page.get_by_test_id("filter-type")).to_have_value(HOSTILE)
    expect(page.locator(injected)).to_have_count(0)

    # On its page: type, error and traceback.
    rows(page).get_by_test_id("job-link").click()
    expect(page).to_have_url(f"{server}/jobs/{world.hostile}")
    expect(page.get_by_test_id("job-type")).to_have_text(HOSTILE)
    expect(page).to_have_title(re.compile(r"^Job "))
    expect(page.get_by_test_id("job-error")).to_have_text(f"RuntimeError: {HOSTILE_ERROR}")
    expect(page.get_by_test_id("attempt-error")).to_have_text(f"RuntimeError: {HOSTILE_ERROR}")
    traceback = page.get_by_test_id("traceback")
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text(f"RuntimeError: {HOSTILE_ERROR}")
    expect(page.locator(injected)).to_have_count(0)

    # In an error message of the dashboard: a link naming a queue it does not show.
    page.goto(f"{server}/jobs?{urlencode({'queue': HOSTILE, 'status': 'dead'})}")
    expect(page.get_by_test_id("filter-error")).to_have_text(
        f"queue: this dashboard does not show a queue named '{HOSTILE}'"
    )
    expect(page.locator(injected)).to_have_count(0)
    # Nothing tried to run and was blocked by the policy either.
    assert not [m for m in console if "Content Security Policy" in m], console


# ---- the fixture's helper -------------------------------------------------------------


def test_with_tasks_runs_tasks_for_the_lifespan() -> None:
    """`with_tasks`: each task is up before the server serves and stopped with it; a task
    that fails to start fails the startup, so that no test runs without its worker."""
    events: list[str] = []

    async def task(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events.append("started")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            events.append("stopped")

    with serve_asgi(with_tasks(Starlette(), task)):
        assert events == ["started"]
    assert events == ["started", "stopped"]

    async def broken(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise ValueError("no worker today")

    with (
        pytest.raises(RuntimeError, match=r"(?s)failed its lifespan startup.*no worker today"),
        serve_asgi(with_tasks(Starlette(), broken)),
    ):
        pytest.fail("the server started")
