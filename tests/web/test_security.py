"""What makes the dashboard safe to expose, over HTTP on real servers: read-only mode,
read-only connections (as a replica's), authentication, and the anti-CSRF checks."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from kyu_trio import ConfigError, JobStatus, Queue
from kyu_trio.dashboard import BasicAuth, BearerAuth, DashboardConfig
from tests.web.conftest import BASE, Web, make_dead

pytestmark = pytest.mark.integration

POST_FORM = re.compile(r'<form[^>]*method="post"')


async def action_routes(queue: Queue) -> list[tuple[str, dict[str, str]]]:
    """Every state-changing route, with a form that would act if it were let through."""
    [dead] = await make_dead(queue, 1)
    later = await queue.enqueue("ok", 1, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    name = queue.config.queue_name
    return [
        (f"/jobs/{dead}/retry", {}),
        (f"/jobs/{later}/cancel", {}),
        (f"/jobs/{later}/delete", {}),
        ("/jobs/bulk", {"do": "cancel:selected", "job": later, "confirmed": "yes"}),
        ("/jobs/filter-action", {"action": "retry", "status": "dead"}),
        ("/queues/pause", {"queue": name}),
        ("/queues/resume", {"queue": name}),
        ("/cron/run", {"queue": name, "name": "x"}),
    ]


async def with_session(make_web: Callable[..., Web], **settings: object) -> Web:
    """A dashboard that shows no form (so no token), with a valid session and token all
    the same: taken from a writable dashboard's page signed with the same secret."""
    secret = b"s" * 32
    web = make_web(csrf_secret=secret, **settings)
    writer = make_web(csrf_secret=secret)
    await writer.get("/")
    web.client.cookies = writer.client.cookies
    web.token = writer.token
    return web


async def unchanged(queue: Queue, routes: list[tuple[str, dict[str, str]]]) -> None:
    dead_id = routes[0][0].split("/")[2]
    later_id = routes[1][0].split("/")[2]
    assert (await queue.inspect(dead_id)).status is JobStatus.DEAD
    assert (await queue.inspect(later_id)).status is JobStatus.SCHEDULED
    assert not await queue.is_paused()


async def test_read_only_shows_no_action_and_refuses_posts(
    make_web: Callable[..., Web], queue: Queue
) -> None:
    routes = await action_routes(queue)
    web = make_web(read_only=True)
    dead_id = routes[0][0].split("/")[2]
    for path in ("/", "/jobs", "/jobs?status=dead", f"/jobs/{dead_id}", f"/jobs/{dead_id}/delete"):
        page = await web.get(path)
        assert page.status_code == 200, path
        assert not POST_FORM.search(page.text), path
        assert 'data-testid="read-only-badge"' in page.text
        for button in (
            "retry-button",
            "cancel-button",
            "pause-button",
            "bulk-toolbar",
            "job-check",
        ):
            assert f'data-testid="{button}"' not in page.text, (path, button)
    # With a valid session and token, every POST is still refused.
    web = await with_session(make_web, read_only=True)
    for path, form in routes:
        answer = await web.post(path, form)
        assert answer.status_code == 403, path
        assert "read-only" in answer.text
    await unchanged(queue, routes)


async def test_read_only_connection_means_read_only(
    make_web: Callable[..., Web], queue: Queue, pg_dsn: str
) -> None:
    """A connection that cannot write (a replica, or here a session whose
    default_transaction_read_only is on) and no primary: a banner says the dashboard is
    read-only, and it acts on nothing. With a primary, actions go there."""
    routes = await action_routes(queue)
    read_only_dsn = f"{pg_dsn} options='-c default_transaction_read_only=on'"
    web = await with_session(make_web, dsn=read_only_dsn)
    page = await web.get("/")
    assert page.status_code == 200
    banner = re.search(r'data-testid="banner-warning">([^<]+)<', page.text)
    assert banner is not None and "Read-only" in banner.group(1)
    assert "no primary was given (--primary-dsn)" in banner.group(1)
    assert not POST_FORM.search(page.text)
    for path, form in routes:
        assert (await web.post(path, form)).status_code == 403, path
    await unchanged(queue, routes)

    # The same reads, with the primary for actions.
    web = make_web(dsn=read_only_dsn, primary_dsn=pg_dsn)
    page = await web.get("/")
    assert 'data-testid="pause-button"' in page.text
    assert (await web.post("/queues/pause", {"queue": queue.config.queue_name})).status_code == 303
    assert await queue.is_paused()


@pytest.mark.parametrize("kind", ["basic", "bearer"])
async def test_wrong_credentials_get_401(
    make_web: Callable[..., Web], queue: Queue, kind: str
) -> None:
    if kind == "basic":
        auth: BasicAuth | BearerAuth = BasicAuth("ops", "correct horse battery")
        good = "Basic " + base64.b64encode(b"ops:correct horse battery").decode()
        bad = [
            "Basic " + base64.b64encode(b"ops:wrong").decode(),
            "Basic " + base64.b64encode(b"other:correct horse battery").decode(),
            "Basic !!!not-base64",
            "Bearer correct horse battery",
        ]
        challenge = 'Basic realm="kyu-trio dashboard"'
    else:
        auth = BearerAuth("t0ken-t0ken-t0ken-t0ken")
        good = "Bearer t0ken-t0ken-t0ken-t0ken"
        bad = ["Bearer t0ken-t0ken-t0ken-t0kem", "Bearer ", "Basic dDBrZW4="]
        challenge = 'Bearer realm="kyu-trio dashboard"'
    anonymous = make_web(auth=auth)
    for path in ("/", "/jobs", "/static/dashboard.css", "/live/overview"):
        answer = await anonymous.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith(challenge)
        assert answer.headers["x-frame-options"] == "DENY"
    for header in bad:
        assert (await make_web({"Authorization": header}, auth=auth).get("/")).status_code == 401
    # A POST without credentials is refused before anything else is looked at.
    answer = await anonymous.client.post("/queues/pause", data={"queue": queue.config.queue_name})
    assert answer.status_code == 401
    assert not await queue.is_paused()
    allowed = make_web({"Authorization": good}, auth=auth)
    assert (await allowed.get("/")).status_code == 200
    assert (
        await allowed.post("/queues/pause", {"queue": queue.config.queue_name})
    ).status_code == 303
    assert await queue.is_paused()


async def test_posts_without_a_valid_csrf_token_are_refused(
    make_web: Callable[..., Web], queue: Queue
) -> None:
    routes = await action_routes(queue)
    web = make_web()
    await web.get("/")
    other = make_web()
    await other.get("/")
    assert web.token is not None and other.token is not None and web.token != other.token
    for path, form in routes:
        # No token at all.
        answer = await web.post(path, form, token=False)
        assert answer.status_code == 403, path
        assert "anti-forgery token" in answer.text
        # A wrong one, and another session's (valid there, not here).
        for token in ("0" * 64, other.token):
            answer = await web.client.post(
                path, data={**form, "csrf_token": token}, headers={"Origin": BASE}
            )
            assert answer.status_code == 403, path
        # The right token from another site (Origin, or Referer without Origin).
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Origin": "", "Referer": "https://evil.example/page"},
        ):
            sent = {k: v for k, v in headers.items() if v}
            answer = await web.client.post(
                path, data={**form, "csrf_token": web.token}, headers=sent
            )
            assert answer.status_code == 403, (path, headers)
            assert "another site" in answer.text
    # Without the session cookie the token means nothing.
    fresh = make_web()
    answer = await fresh.client.post(
        "/queues/pause",
        data={"queue": queue.config.queue_name, "csrf_token": web.token},
        headers={"Origin": BASE},
    )
    assert answer.status_code == 403 and "session cookie" in answer.text
    await unchanged(queue, routes)
    # And with all of it right, the same POST works (no Origin at all is fine too).
    answer = await web.client.post(
        "/queues/pause", data={"queue": queue.config.queue_name, "csrf_token": web.token}
    )
    assert answer.status_code == 303
    assert await queue.is_paused()


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="dsn"):
        DashboardConfig(dsn="")
    with pytest.raises(ConfigError, match="invalid queue name"):
        DashboardConfig(dsn="postgresql://h/db", queues=["bad name"])
    with pytest.raises(ConfigError, match="at least 16"):
        BearerAuth("short")
    with pytest.raises(ConfigError, match="user name"):
        BasicAuth("a:b", "pw")
    with pytest.raises(ConfigError, match="statement_timeout"):
        DashboardConfig(dsn="postgresql://h/db", statement_timeout=0)
    config = DashboardConfig(
        dsn="postgresql://u:hunter2@h/db", primary_dsn="postgresql://u:pw2@p/db"
    )
    assert "hunter2" not in repr(config) and "pw2" not in repr(config)
    assert "correct" not in repr(BasicAuth("u", "correct horse"))
