"""Fixtures of the web dashboard's HTTP tests: the app (`kyu_trio.dashboard.create_app`)
on this run's real PostgreSQL and Redis, showing the test's own queue, driven over HTTP
by httpx's ASGI transport (the app runs in the test's own trio loop; its blocking reads
and actions in worker threads, as when served).

``web`` is a small browser: it keeps the session cookie, reads the anti-CSRF token off
the last page it got, and posts forms with it (and a same-site ``Origin``), as a browser
posting the dashboard's own forms would.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is missing: pip install -e '.[dev]'")

from starlette.applications import Starlette

from kyu_trio import Config, JobStatus, Queue
from kyu_trio.dashboard import DashboardConfig, create_app

BASE = "http://testserver"
TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


class Web:
    """An HTTP client of one dashboard app, with a session like a browser's."""

    def __init__(self, app: Starlette, headers: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url=BASE,
            headers=dict(headers or {}),
            timeout=30,
        )
        self.token: str | None = None

    def _remember(self, response: httpx.Response) -> httpx.Response:
        found = TOKEN.search(response.text)
        if found:
            self.token = found.group(1)
        return response

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        return self._remember(await self.client.get(path, params=params))

    async def post(
        self,
        path: str,
        data: Mapping[str, str | Sequence[str]] | None = None,
        *,
        token: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST a form as the page's own form would (with its token unless ``token`` is
        False); redirects are not followed (see `follow`)."""
        if token and self.token is None:
            await self.get("/")
        fields: dict[str, str | list[str]] = {
            k: (list(v) if not isinstance(v, str) else v) for k, v in (data or {}).items()
        }
        if token:
            assert self.token is not None
            fields["csrf_token"] = self.token
        sent = {"Origin": BASE, **(headers or {})}
        return self._remember(await self.client.post(path, data=fields, headers=sent))

    async def follow(self, response: httpx.Response) -> httpx.Response:
        """The page a 303 after a POST leads to."""
        assert response.status_code == 303, (response.status_code, response.text[:2000])
        return await self.get(response.headers["location"])

    async def aclose(self) -> None:
        await self.client.aclose()


@pytest.fixture
def dashboard_settings(pg_dsn: str, redis_url: str, queue_name: str) -> dict[str, Any]:
    """The settings every test's dashboard starts from: this run's servers, the test's
    queue only, small pages."""
    return {
        "dsn": pg_dsn,
        "redis_url": redis_url,
        "queues": [queue_name],
        "page_size": 10,
        "refresh_interval": 0,
    }


@pytest.fixture
async def make_web(dashboard_settings: dict[str, Any]) -> AsyncIterator[Callable[..., Web]]:
    """``make_web(**settings)``: a `Web` on a new dashboard app (settings on top of
    `dashboard_settings`); apps and clients closed at the end."""
    made: list[Web] = []

    def make(headers: Mapping[str, str] | None = None, **settings: Any) -> Web:
        app = create_app(DashboardConfig(**{**dashboard_settings, **settings}))
        web = Web(app, headers)
        made.append(web)
        return web

    yield make
    for web in made:
        await web.aclose()
        await web.app.state.kyu_dashboard.aclose()


@pytest.fixture
async def web(make_web: Callable[..., Web]) -> Web:
    return make_web()


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(scheduler_interval=0.2, heartbeat_interval=0.5)


@pytest.fixture
async def queue(config: Config) -> AsyncIterator[Queue]:
    """A connected queue (the test's own) with two handlers: ``ok`` returns its payload,
    ``boom`` raises ``ValueError(payload)``."""
    q = Queue(config)

    @q.handler("ok")
    async def ok(payload: Any) -> Any:
        return payload

    @q.handler("boom")
    async def boom(payload: Any) -> None:
        raise ValueError(payload)

    async with q:
        yield q


async def make_dead(
    queue: Queue, n: int, job_type: str = "boom", error: str = "broken"
) -> list[str]:
    """``n`` dead jobs of ``job_type`` (its handler must raise), each with one failed run."""
    ids = [await queue.enqueue(job_type, error, max_retries=0) for _ in range(n)]
    await queue.run_once()
    for job_id in ids:
        job = await queue.inspect(job_id)
        assert job.status is JobStatus.DEAD, job
    return ids


COUNT = re.compile(r'data-testid="count-(\w+)" data-count="(\d+)" data-exact="(yes|no)"')
ROW = re.compile(r'data-testid="job-row" data-job-id="([0-9a-f-]{36})" data-status="(\w+)"')


def counts(html: str) -> dict[str, int]:
    """The overview's exact counts by status (of its first queue)."""
    return {status: int(n) for status, n, exact in COUNT.findall(html) if exact == "yes"}


def row_ids(html: str) -> list[str]:
    """The job ids of a list page, in order."""
    return [job_id for job_id, _ in ROW.findall(html)]
