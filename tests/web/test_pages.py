"""The dashboard's pages over HTTP, on real PostgreSQL and Redis: what the overview, the
list and the job page show, escaping, and error pages instead of tracebacks."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import trio

from kyu_trio import Queue
from tests.web.conftest import Web, counts, make_dead, row_ids

pytestmark = pytest.mark.integration

CHART_TITLE = re.compile(
    r"<title>\d\d:\d\d UTC: (?:about )?([\d,]+) completed, (?:about )?([\d,]+) failed"
)


async def test_overview_counts_every_status(web: Web, queue: Queue, pg_dsn: str) -> None:
    for _ in range(3):
        await queue.enqueue("ok", "fine")
    await queue.run_once()  # 3 completed
    await make_dead(queue, 2)
    for _ in range(4):
        await queue.enqueue("ok", 1, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    cancelled = await queue.enqueue("ok", 2, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    await queue.cancel_job(cancelled)
    for _ in range(5):
        await queue.enqueue("ok", 3)

    page = await web.get("/")
    assert page.status_code == 200
    assert counts(page.text) == {
        "pending": 5,
        "scheduled": 4,
        "running": 0,
        "failed": 0,
        "completed": 3,
        "dead": 2,
        "cancelled": 1,
    }
    assert queue.config.queue_name in page.text
    assert 'data-testid="active-badge"' in page.text
    # The chart counts the 3 completions and the 2 failed runs of this minute.
    bars = CHART_TITLE.findall(page.text)
    assert len(bars) == 60
    assert sum(int(done) for done, _ in bars) == 3
    assert sum(int(failed) for _, failed in bars) == 2
    # Lag: 5 pending jobs have waited a moment.
    assert re.search(r'data-testid="lag"[^>]*>[^<]+<', page.text)

    # The live update's fragment: the same numbers, without the page around them.
    live = await web.get("/live/overview")
    assert live.status_code == 200 and "<html" not in live.text
    assert counts(live.text) == counts(page.text)


async def test_counts_above_the_exact_limit_are_estimates(
    make_web: Callable[..., Web], queue: Queue, pg_dsn: str
) -> None:
    await queue.enqueue_many([("ok", i) for i in range(150)])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE kyu_jobs")
    web = make_web(exact_count_limit=100)
    page = await web.get("/")
    found = re.search(
        r'data-testid="count-pending" data-count="(\d+)" data-exact="no"'
        r'[^>]*title="about [\d,]+: more than 100, so the planner.s estimate"',
        page.text,
    )
    assert found, page.text
    assert int(found.group(1)) >= 100
    assert "\u2248" in page.text  # shown as "≈ 150", never as an exact number


async def test_filters_dead_by_type_id_prefix_and_time(web: Web, queue: Queue, pg_dsn: str) -> None:
    dead_boom = await make_dead(queue, 3, "boom")
    other = await queue.enqueue("ok", "pending one")
    page = await web.get("/jobs", {"status": "dead", "type": "boom"})
    assert page.status_code == 200
    assert set(row_ids(page.text)) == set(dead_boom)
    assert (await web.get("/jobs", {"status": "dead", "type": "ok"})).text.count(
        'data-testid="job-row"'
    ) == 0
    assert row_ids((await web.get("/jobs", {"status": "pending"})).text) == [other]

    # An id prefix: the first 13 characters of one id (dashes allowed) find it.
    target = dead_boom[1]
    found = row_ids((await web.get("/jobs", {"id": target[:13]})).text)
    assert target in found and len(found) <= 4
    # A whole id goes straight to the job's page.
    jump = await web.get("/jobs", {"id": target})
    assert jump.status_code == 303 and jump.headers["location"] == f"/jobs/{target}"
    assert (await web.get("/jobs", {"id": "xyz"})).text.count('data-testid="filter-error"') == 1

    # A time range on when they died: move one death back a day.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE kyu_jobs SET updated_at = updated_at - interval '1 day' WHERE id = %s",
            (dead_boom[0],),
        )
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    recent = row_ids((await web.get("/jobs", {"status": "dead", "from": since})).text)
    assert set(recent) == set(dead_boom[1:])
    older = row_ids((await web.get("/jobs", {"status": "dead", "to": since})).text)
    assert older == [dead_boom[0]]
    assert set(row_ids((await web.get("/jobs", {"status": "dead", "last": "1h"})).text)) == set(
        dead_boom[1:]
    )


async def test_keyset_paging_visits_every_row_once(web: Web, queue: Queue) -> None:
    # 23 jobs in two batches: the first 20 share one created_at (one enqueue_many), so
    # pages must break ties by id.
    ids = await queue.enqueue_many([("ok", i) for i in range(20)])
    ids += [await queue.enqueue("ok", i) for i in range(3)]
    seen: list[str] = []
    pages = 0
    page = await web.get("/jobs")
    while True:
        pages += 1
        seen += row_ids(page.text)
        older = re.search(r'href="([^"]+)" data-testid="page-older"', page.text)
        if older is None:
            break
        page = await web.get(html.unescape(older.group(1)))
    assert pages == 3  # page_size 10
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == set(ids)
    assert seen[:3] == list(reversed(ids[20:]))  # newest first

    # Back: the "newer" link of the last page shows the second page again.
    newer = re.search(r'href="([^"]+)" data-testid="page-newer"', page.text)
    assert newer is not None
    back = await web.get(html.unescape(newer.group(1)))
    assert row_ids(back.text) == seen[10:20]

    # Oldest first: the same rows, the other way round.
    oldest: list[str] = []
    page = await web.get("/jobs", {"order": "oldest"})
    while True:
        oldest += row_ids(page.text)
        older = re.search(r'href="([^"]+)" data-testid="page-older"', page.text)
        if older is None:
            break
        page = await web.get(html.unescape(older.group(1)))
    assert oldest == list(reversed(seen))


async def test_a_scan_cut_short_says_so_and_goes_on(
    make_web: Callable[..., Web], queue: Queue
) -> None:
    """A job type no index holds: one request examines at most scan_limit rows, and the
    page links to the rest."""
    rare = await queue.enqueue("boom", "rare")
    await queue.enqueue_many([("ok", i) for i in range(1500)])
    web = make_web(scan_limit=1000)
    page = await web.get("/jobs", {"type": "boom"})
    assert row_ids(page.text) == []
    assert 'data-testid="cut-short"' in page.text
    further = re.search(r'href="([^"]+)" data-testid="search-further"', page.text)
    assert further is not None
    page = await web.get(html.unescape(further.group(1)))
    assert row_ids(page.text) == [rare]
    assert 'data-testid="cut-short"' not in page.text


async def test_job_page_shows_runs_and_escapes_the_traceback(web: Web, queue: Queue) -> None:
    hostile = "<script>alert(1)</script>"
    [job_id] = await make_dead(queue, 1, "boom", hostile)
    page = await web.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert hostile not in page.text
    escaped = html.escape(hostile, quote=False)
    assert f"ValueError: {escaped}" in page.text  # the error, in the runs and the fields
    traceback = re.search(r'data-testid="traceback">(.*?)</pre>', page.text, re.S)
    assert traceback is not None
    assert "Traceback (most recent call last)" in traceback.group(1)
    assert escaped in traceback.group(1)
    assert 'data-testid="attempt" data-outcome="dead"' in page.text
    assert 'data-testid="payload-hidden"' in page.text and "payload" not in re.findall(
        r'data-testid="(payload)"', page.text
    )
    timeline = re.findall(r'data-testid="timeline-event">.*?<strong>([^<]+)</strong>', page.text)
    assert timeline == ["created", "run 1 started", "run 1 dead"]
    assert (await web.get("/jobs/00000000-0000-7000-8000-000000000000")).status_code == 404
    assert (await web.get("/jobs/not-an-id")).status_code == 404


async def test_payloads_shown_when_asked_and_results(
    make_web: Callable[..., Web], queue: Queue
) -> None:
    job_id = await queue.enqueue("ok", {"to": "ada@example.com", "html": "<b>"})
    await queue.run_once()
    hidden = await make_web().get(f"/jobs/{job_id}")
    assert 'data-testid="payload-hidden"' in hidden.text
    assert 'data-testid="payload"' not in hidden.text
    # The result (here the payload itself) is shown: as the issue asks, only payloads
    # wait for the operator's opt-in.
    assert "ada@example.com" in hidden.text
    shown = await make_web(show_payloads=True).get(f"/jobs/{job_id}")
    payload = re.search(r'data-testid="payload">(.*?)</pre>', shown.text, re.S)
    assert payload is not None and "ada@example.com" in payload.group(1)
    assert "&lt;b&gt;" in payload.group(1)
    result = re.search(r'data-testid="result">(.*?)</pre>', shown.text, re.S)
    assert result is not None and "ada@example.com" in result.group(1)


async def test_hostile_job_type_and_queue_text_is_escaped(
    web: Web, queue: Queue, pg_dsn: str
) -> None:
    hostile = "<script>alert(1)</script>"

    @queue.handler(hostile)
    async def bad(payload: Any) -> None:
        raise RuntimeError(f'{hostile} and "quotes" & <img src=x onerror=alert(2)>')

    job_id = await queue.enqueue(hostile, "x", max_retries=0)
    await queue.run_once()
    for path, params in (
        ("/", None),
        ("/jobs", None),
        ("/jobs", {"type": hostile}),
        ("/jobs", {"status": "dead", "type": hostile}),
        (f"/jobs/{job_id}", None),
    ):
        page = await web.get(path, params)
        assert page.status_code == 200, (path, page.text[:500])
        assert "<script>alert" not in page.text, path
        assert "<img src=x" not in page.text, path
    page = await web.get("/jobs", {"type": hostile})
    assert row_ids(page.text) == [job_id]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_no_password_on_any_page(
    make_web: Callable[..., Web], queue: Queue, pg_dsn: str, redis_url: str
) -> None:
    # Local servers trust the connection, so the password is never checked: only shown,
    # if the dashboard were careless.
    secret = "s3cret-Pa55word"
    with_password = f"{pg_dsn} password={secret}"
    [job_id] = await make_dead(queue, 1)
    web = make_web(
        dsn=with_password,
        primary_dsn=with_password,
        redis_url=redis_url.replace("redis://", f"redis://:{secret}@")
        if "@" not in redis_url
        else redis_url,
    )
    for path in ("/", "/jobs", f"/jobs/{job_id}", "/live/overview", "/jobs?id=zz"):
        page = await web.get(path)
        assert secret not in page.text, path
    # An unreachable server: the error page names it without its password.
    down = make_web(
        dsn=f"postgresql://postgres:{secret}@127.0.0.1:1/nowhere", statement_timeout=0.5
    )
    page = await down.get("/")
    assert page.status_code == 503
    assert secret not in page.text
    assert "127.0.0.1:1" in page.text


async def test_statement_timeout_is_an_error_banner(
    make_web: Callable[..., Web], queue: Queue, pg_dsn: str
) -> None:
    await queue.enqueue("ok", 1)
    web = make_web(statement_timeout=0.3)
    with psycopg.connect(pg_dsn) as locker:
        # Another session holds kyu_jobs: every read of it waits, then times out.
        locker.execute("LOCK TABLE kyu_jobs IN ACCESS EXCLUSIVE MODE")
        page = await web.get("/")
        jobs = await web.get("/jobs")
    assert page.status_code == 503
    assert 'data-testid="banner-error"' in page.text
    assert "statement timeout (0.3 s)" in page.text
    assert "Traceback" not in page.text and "psycopg" not in page.text
    assert jobs.status_code == 503
    # Once the lock is gone, the same app answers again.
    assert (await web.get("/")).status_code == 200


async def test_outages_are_error_pages(
    make_web: Callable[..., Web], queue: Queue, pg_dsn: str
) -> None:
    down = make_web(dsn="postgresql://postgres@127.0.0.1:1/nowhere", statement_timeout=0.5)
    with trio.fail_after(20):
        page = await down.get("/")
    assert page.status_code == 503
    assert "PostgreSQL at 127.0.0.1:1" in page.text and "Traceback" not in page.text
    # Redis away: the page still shows, and says the depth is unknown.
    no_redis = make_web(redis_url="redis://127.0.0.1:1/0")
    page = await no_redis.get("/")
    assert page.status_code == 200
    assert "Queue depth unknown" in page.text and "Redis at 127.0.0.1:1" in page.text
    assert re.search(r'data-testid="depth">unknown<', page.text)


async def test_security_headers_on_every_response(web: Web, queue: Queue) -> None:
    first = await web.get("/")
    cookie = first.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    for path in ("/", "/jobs", "/static/dashboard.css", "/static/dashboard.js", "/nowhere"):
        response = await web.get(path)
        assert response.headers["x-frame-options"] == "DENY", path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    page = await web.get("/")
    assert page.headers["cache-control"] == "no-store"
    assert "set-cookie" not in page.headers  # the session goes on
    # No inline script anywhere (the CSP would block it): scripts are files.
    assert re.findall(r"<script[^>]*>\s*[^<\s]", page.text) == []
    assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == []
    assert " style=" not in page.text and "<style" not in page.text


async def test_a_busy_hour_is_estimated_from_samples(
    web: Web, queue: Queue, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More completions in the hour than the chart counts exactly: the newest minutes
    are exact, the older ones estimated from a window of each, and drawn as such."""
    from kyu_trio.dashboard import _reads

    if datetime.now(UTC).second >= 55:  # the page must be read in the same minute
        await trio.sleep(6)
    monkeypatch.setattr(_reads, "CHART_EXACT", 20)
    monkeypatch.setattr(_reads, "CHART_SAMPLED", 40)
    ids = await queue.enqueue_many([("ok", i) for i in range(100)])
    await queue.run_once()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # Two completions in each of the last 50 minutes (none in the current one).
        conn.execute(
            """
            UPDATE kyu_jobs j SET completed_at = %(now)s - (t.n / 2 + 1) * interval '1 minute'
                                                  + (t.n %% 2) * interval '30 seconds'
                                                  + interval '1 second'
            FROM unnest(%(ids)s::uuid[]) WITH ORDINALITY AS t(id, n)
            WHERE j.id = t.id
            """,
            {"now": now, "ids": ids},
        )
    page = await web.get("/")
    bars = CHART_TITLE.findall(page.text)
    done = [int(n.replace(",", "")) for n, _ in bars]
    # The newest minutes counted exactly (the last whole minute holds 1, then 2 each);
    # the older ones estimated: here 1 completion in a window of about 29 s, times 60/29.
    assert done[-1] == 0 and done[-2] == 1 and done[-11:-2] == [2] * 9, str(done)
    assert set(done[-50:-11]) == {2}, str(done)
    # Failures of every queue in this database share the (here tiny) exact budget, so
    # that series may be estimated too: only the completions are looked at.
    estimated = re.findall(r"<title>[^<]*UTC: about [\d,]+ completed", page.text)
    assert len(estimated) == 49  # the minutes before the 20 newest completions
    assert page.text.count('class="bar-done estimated"') == 41  # those that had some
    assert page.text.count('class="bar-done"') == 10  # the newest ones, exact
    assert "pale bars: estimated from a sample of each minute" in page.text
