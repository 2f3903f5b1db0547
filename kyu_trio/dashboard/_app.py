"""The dashboard's ASGI application: routes, pages and actions (`create_app`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import attrs
import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.datastructures import FormData, QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._clients._sync import Client
from .._dsn import postgres_address
from .._errors import KyuError
from .._job import JobStatus
from .._validation import MAX_BULK_IDS, check_job_type_filter
from .._version import __version__
from . import _reads as reads
from ._chart import chart_svg
from ._config import DashboardConfig
from ._db import Actions, DashboardError, Depths, ReadDatabase, StatementTimeout
from ._query import PLANS, TIME_LABELS, Cursor, JobFilter, id_range
from ._security import (
    COOKIE,
    TOKEN_FIELD,
    Authentication,
    SecurityHeaders,
    csrf_problem,
    new_session,
    token_for,
    valid_session,
)

log = logging.getLogger("kyu_trio.dashboard")

#: Jobs per batch of a bulk action on a whole filter (one call of the library each).
BULK_BATCH = 1000
#: Most batches of one such request: each examines at most ``scan_limit`` rows, so a
#: filter that few rows match stops after this many (the page says to go on).
BULK_BATCHES = 200
#: Quick time ranges of the list's filter.
LAST = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
}
#: Which statuses each action can change (the library ignores the others).
ACTS_ON = {
    "retry": (JobStatus.DEAD, JobStatus.FAILED),
    "cancel": (JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.FAILED, JobStatus.RUNNING),
    "delete": tuple(s for s in JobStatus if s is not JobStatus.RUNNING),
}
#: The outcome messages a redirect may name (never free text from the URL).
MESSAGES = {
    "retried": "Job retried: it is pending again.",
    "not_retried": "Not retried: only dead or failed jobs can be retried.",
    "cancelled": "Job cancelled.",
    "not_cancelled": "Not cancelled: the job had already finished.",
    "deleted": "Job deleted.",
    "not_deleted": "Not deleted: a running job cannot be deleted (cancel it first).",
    "bulk_retry": "{n} jobs retried.",
    "bulk_cancel": "{n} jobs cancelled.",
    "bulk_delete": "{n} jobs deleted.",
    "bulk_retry_part": "{n} jobs retried; the request stopped before the end of the filter: "
    "apply it again for the rest.",
    "bulk_cancel_part": "{n} jobs cancelled; the request stopped before the end of the "
    "filter: apply it again for the rest.",
    "bulk_delete_part": "{n} jobs deleted; the request stopped before the end of the filter: "
    "apply it again for the rest.",
    "paused": "Queue {queue} paused: running jobs finish, no new job starts.",
    "resumed": "Queue {queue} resumed.",
    "cron_run": "Cron entry run: its job was enqueued.",
}
_QUEUE_NAME = re.compile(r"[A-Za-z0-9:_.\-]{1,200}")
_DATETIME_FORMS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


class BadFilter(ValueError):
    """A filter field of the list that cannot be understood (said on the page)."""


# ---- template helpers ------------------------------------------------------------------


def _ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = (now - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            text = f"{int(seconds // size)} {unit}"
            return f"in {text}" if future else f"{text} ago"
    return "now"


def _iso(when: datetime | None) -> str:
    if when is None:
        return ""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: int) -> str:
    return f"{value:,}"


def _about(value: int) -> str:
    """4,213,118 -> "≈ 4.2M" (an estimate: the page says so)."""
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if value >= size:
            return f"\u2248 {value / size:.1f}{suffix}"
    return f"\u2248 {value}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kyu_trio.dashboard", "templates"),
        # Everything shown comes from users (job types, payloads, errors, tracebacks,
        # queue and cron names): escaped everywhere, with no exception.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=_ago, iso=_iso, number=_number, about=_about, duration=_duration)
    return env


# ---- the state of one request ----------------------------------------------------------


@attrs.frozen
class Banner:
    kind: str  # info, warning, error
    text: str


@attrs.define
class Page:
    """What every page shows besides its own content."""

    request: Request
    dashboard: Dashboard
    session: str
    new_session: bool
    info: reads.ServerInfo | None = None
    queues: list[str] = attrs.Factory(list)
    banners: list[Banner] = attrs.Factory(list)

    @property
    def root(self) -> str:
        return str(self.request.scope.get("root_path", "")).rstrip("/")

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        query = ""
        if params:
            items = [(k, v) for k, v in params.items() if v not in (None, "")]
            query = "?" + urlencode(items) if items else ""
        return f"{self.root}{path}{query}"

    @property
    def can_act(self) -> bool:
        return self.dashboard.can_act(self.info)

    @property
    def csrf_token(self) -> str:
        return token_for(self.dashboard.config.csrf_secret, self.session)

    def context(self, **values: Any) -> dict[str, Any]:
        config = self.dashboard.config
        return {
            "page": self,
            "config": config,
            "version": __version__,
            "now": datetime.now(UTC),
            "read_address": self.info.address if self.info else self.dashboard.db.address,
            "primary_address": self.dashboard.primary_address,
            "redis_address": self.dashboard.depths.address,
            "statuses": list(JobStatus),
            "nav": None,
            "message": None,
            "csrf_field": Markup(
                f'<input type="hidden" name="{TOKEN_FIELD}" value="{self.csrf_token}">'
            ),
            **values,
        }


def _session(request: Request) -> tuple[str, bool]:
    value = request.cookies.get(COOKIE)
    if valid_session(value):
        assert value is not None
        return value, False
    return new_session(), True


# ---- the dashboard ---------------------------------------------------------------------


class Dashboard:
    """The state of one app: settings, connections, templates. Its pools open on first
    use (a mounted app gets no lifespan events) and close with `aclose`."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self.db = ReadDatabase(config)
        self.depths = Depths(config.redis_url)
        self._actions: Actions | None = None
        self.templates = _environment()
        self.primary_address = (
            postgres_address(config.primary_dsn) if config.primary_dsn is not None else None
        )

    # -- mode --

    def can_act(self, info: reads.ServerInfo | None) -> bool:
        if self.config.read_only:
            return False
        if self.config.primary_dsn is not None:
            return True
        return info is not None and info.writable

    def actions(self) -> Actions:
        if self._actions is None:
            dsn = self.config.primary_dsn or self.config.dsn
            self._actions = Actions(dsn, self.config.redis_url)
        return self._actions

    def banners(self, info: reads.ServerInfo | None) -> list[Banner]:
        found: list[Banner] = []
        if self.config.read_only:
            found.append(
                Banner(
                    "info", "Read-only dashboard: it was started read-only, so it offers no action."
                )
            )
        if info is None:
            return found
        if info.in_recovery:
            if self.config.primary_dsn is not None:
                found.append(
                    Banner(
                        "info",
                        f"Reading from a replica ({info.address}); actions go to the primary "
                        f"({self.primary_address}). What is shown may lag behind it.",
                    )
                )
            elif not self.config.read_only:
                found.append(
                    Banner(
                        "warning",
                        f"Read-only: the database at {info.address} is a replica (in recovery) "
                        "and no primary was given (--primary-dsn), so the dashboard offers no "
                        "action.",
                    )
                )
        elif info.read_only and self.config.primary_dsn is None and not self.config.read_only:
            found.append(
                Banner(
                    "warning",
                    f"Read-only: the connection to {info.address} is read-only "
                    "(default_transaction_read_only is on for its user or database) and no "
                    "primary was given (--primary-dsn), so the dashboard offers no action.",
                )
            )
        if info.schema_version > 0 and not info.has_dashboard_indexes:
            found.append(
                Banner(
                    "warning",
                    f"The database has kyu-trio schema version {info.schema_version}: the chart "
                    "of failed runs needs version 13 (run `kyu-trio migrate` on the primary).",
                )
            )
        return found

    # -- pages --

    async def page(self, request: Request) -> Page:
        session, fresh = _session(request)
        return Page(request, self, session, fresh)

    async def load(self, page: Page, fn: Callable[[Any, reads.ServerInfo, list[str]], Any]) -> Any:
        """Server info, the queues shown and ``fn(conn, info, queues)``, in one read-only
        transaction; sets the page's info, queues and banners."""
        config = self.config

        def read(conn: Any) -> tuple[reads.ServerInfo, list[str], Any]:
            info = reads.server_info(conn)
            queues = list(config.queues)
            if config.discovering:
                for name in reads.discover_queues(conn, info):
                    if name not in queues:
                        queues.append(name)
            return info, queues, fn(conn, info, queues)

        info, queues, value = await self.db.run(read)
        page.info, page.queues = info, queues
        page.banners = self.banners(info) + page.banners
        return value

    def render(
        self, page: Page, template: str, status_code: int = 200, **values: Any
    ) -> HTMLResponse:
        html = self.templates.get_template(template).render(page.context(**values))
        response = HTMLResponse(html, status_code=status_code)
        if page.new_session:
            response.set_cookie(
                COOKIE,
                page.session,
                httponly=True,
                samesite="strict",
                secure=page.request.url.scheme == "https",
                path=(page.root or "") + "/",
            )
        return response

    def error_page(self, page: Page, error: Exception, status_code: int = 503) -> HTMLResponse:
        text = str(error)
        title = (
            "The query took too long"
            if isinstance(error, StatementTimeout)
            else "Cannot read the data"
        )
        if not isinstance(error, KyuError):
            title, text = (
                "Something went wrong",
                "An unexpected error; the server's log has the details.",
            )
        page.banners = [*self.banners(page.info), Banner("error", text)]
        return self.render(page, "error.html", status_code=status_code, title=title, message=text)

    async def aclose(self) -> None:
        """Close the dashboard's connections (they reopen on the next request)."""
        import anyio.to_thread

        def close() -> None:
            self.db.close()
            self.depths.close()
            if self._actions is not None:
                self._actions.close()

        await anyio.to_thread.run_sync(close)


# ---- parsing ---------------------------------------------------------------------------


def _parsed(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    for form in _DATETIME_FORMS:
        try:
            return datetime.strptime(text, form)
        except ValueError:
            continue
    return None


def _when(text: str, field: str) -> datetime | None:
    """A time of the filter form (UTC unless it says otherwise)."""
    text = text.strip()
    if not text:
        return None
    value = _parsed(text)
    if value is None:
        raise BadFilter(f"{field}: not a date and time (use 2026-01-31T12:00, UTC)")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@attrs.frozen
class ListArgs:
    """The list's filter as the form and the links carry it."""

    queue: str = ""
    status: str = ""
    type: str = ""
    since: str = ""
    until: str = ""
    last: str = ""
    id: str = ""
    order: str = "newest"

    @classmethod
    def read(cls, values: QueryParams | FormData) -> ListArgs:
        def get(name: str) -> str:
            value = values.get(name)
            return value.strip()[:300] if isinstance(value, str) else ""

        return cls(
            get("queue"),
            get("status"),
            get("type"),
            get("from"),
            get("to"),
            get("last"),
            get("id"),
            get("order") or "newest",
        )

    def params(self) -> dict[str, str]:
        return {
            "queue": self.queue,
            "status": self.status,
            "type": self.type,
            "from": self.since,
            "to": self.until,
            "last": self.last,
            "id": self.id,
            "order": "" if self.order == "newest" else self.order,
        }

    def to_filter(self, queues: Sequence[str], now: datetime) -> JobFilter:
        if self.queue:
            if self.queue not in queues:
                raise BadFilter(f"queue: this dashboard does not show a queue named {self.queue!r}")
            chosen: tuple[str, ...] = (self.queue,)
        else:
            chosen = tuple(queues)
        if not chosen:
            raise BadFilter("no queue to show: start the dashboard with --queue NAME")
        status: JobStatus | None = None
        if self.status:
            try:
                status = JobStatus(self.status)
            except ValueError:
                raise BadFilter(f"status: unknown status {self.status!r}") from None
        since = _when(self.since, "from")
        until = _when(self.until, "to")
        if self.last:
            if self.last not in LAST:
                raise BadFilter(f"last: use one of {', '.join(LAST)}")
            since = now - LAST[self.last]
        if since is not None and until is not None and since >= until:
            raise BadFilter("from must be before to")
        low = high = None
        if self.id:
            found = id_range(self.id)
            if found is None:
                raise BadFilter("id: a job id, or the first hex digits of one")
            low, high = found
        if self.order not in ("newest", "oldest"):
            raise BadFilter("order: newest or oldest")
        try:
            job_type = check_job_type_filter(self.type or None)
        except KyuError as exc:
            raise BadFilter(f"type: {exc}") from None
        return JobFilter(
            chosen,
            status,
            job_type,
            since,
            until,
            self.id or None,
            low,
            high,
            self.order == "oldest",
        )

    def describe(self, flt: JobFilter) -> str:
        """The filter in words, for confirmation pages."""
        parts = [flt.status.value if flt.status else "all", "jobs"]
        if flt.job_type:
            parts.append(f"of type {flt.job_type}")
        parts.append(f"in {', '.join(flt.queues)}")
        label = TIME_LABELS[flt.status.value if flt.status else ""]
        if flt.id_low is not None:
            parts.append(f"with an id starting {flt.id_prefix}")
            label = "created"
        if flt.since:
            parts.append(f"{label} since {_iso(flt.since)}")
        if flt.until:
            parts.append(f"{label} before {_iso(flt.until)}")
        return " ".join(parts)


def _job_id(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


# ---- routes ----------------------------------------------------------------------------


Handler = Callable[[Request], Awaitable[Response]]


def _dashboard(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.kyu_dashboard
    return found


def _guarded(handler: Callable[[Dashboard, Page], Awaitable[Response]]) -> Handler:
    """A page handler: a database or Redis error becomes an error page (503), never a
    traceback; anything else a plain 500 page (logged with its traceback)."""

    async def endpoint(request: Request) -> Response:
        dashboard = _dashboard(request)
        page = await dashboard.page(request)
        try:
            return await handler(dashboard, page)
        except HTTPException:
            raise
        except DashboardError as exc:
            return dashboard.error_page(page, exc)
        except KyuError as exc:
            return dashboard.error_page(page, exc, 502)
        except Exception as exc:
            log.exception("the dashboard failed on %s %s", request.method, request.url.path)
            return dashboard.error_page(page, exc, 500)

    return endpoint


def _action(handler: Callable[[Dashboard, Page, FormData], Awaitable[Response]]) -> Handler:
    """A state-changing handler: refused (403) in read-only mode and without a valid
    anti-CSRF token, before the form is even read; then as `_guarded`."""

    async def endpoint(request: Request) -> Response:
        dashboard = _dashboard(request)
        if dashboard.config.read_only:
            return _forbidden("This dashboard is read-only: it takes no action.")
        form = await request.form(max_files=0, max_fields=MAX_BULK_IDS + 100)
        token = form.get(TOKEN_FIELD)
        problem = csrf_problem(
            request.scope,
            request.cookies.get(COOKIE),
            token if isinstance(token, str) else None,
            dashboard.config.csrf_secret,
            dashboard.config.trusted_origins,
        )
        if problem is not None:
            return _forbidden(f"Refused: {problem}.")

        async def act(dashboard: Dashboard, page: Page) -> Response:
            await dashboard.load(page, lambda conn, info, queues: None)
            if not page.can_act:
                return _forbidden("Refused: this dashboard cannot act (read-only).")
            return await handler(dashboard, page, form)

        return await _guarded(act)(request)

    return endpoint


def _forbidden(text: str) -> Response:
    return Response(text + "\n", status_code=403, media_type="text/plain; charset=utf-8")


def _redirect(page: Page, path: str, params: Mapping[str, Any] | None = None) -> Response:
    return RedirectResponse(page.url(path, params), status_code=303)


def _message(params: QueryParams) -> str | None:
    code = params.get("msg")
    if code not in MESSAGES:
        return None
    n = params.get("n") or "0"
    queue = params.get("q") or ""
    if not n.isdigit() or (queue and not _QUEUE_NAME.fullmatch(queue)):
        return None
    return MESSAGES[code].format(n=f"{int(n):,}", queue=queue)


# -- overview --


async def _overview_data(dashboard: Dashboard, page: Page) -> dict[str, Any]:
    now = datetime.now(UTC)
    cap = dashboard.config.exact_count_limit

    def read(conn: Any, info: reads.ServerInfo, queues: list[str]) -> list[reads.QueueOverview]:
        return [reads.queue_overview(conn, queue, now, cap, info) for queue in queues]

    overviews: list[reads.QueueOverview] = await dashboard.load(page, read)
    depths: dict[str, int] = {}
    if overviews:
        try:
            depths = dict(zip(page.queues, await dashboard.depths.get(page.queues), strict=True))
        except DashboardError as exc:
            page.banners.append(Banner("warning", f"Queue depth unknown: {exc}"))
    return {
        "overviews": overviews,
        "depths": depths,
        "charts": {o.name: chart_svg(o.chart) for o in overviews},
        "now": now,
    }


@_guarded
async def overview(dashboard: Dashboard, page: Page) -> Response:
    data = await _overview_data(dashboard, page)
    return dashboard.render(
        page, "overview.html", message=_message(page.request.query_params), **data
    )


@_guarded
async def overview_live(dashboard: Dashboard, page: Page) -> Response:
    data = await _overview_data(dashboard, page)
    return dashboard.render(page, "_queues.html", **data)


# -- jobs --


@_guarded
async def jobs(dashboard: Dashboard, page: Page) -> Response:
    config = dashboard.config
    params = page.request.query_params
    args = ListArgs.read(params)
    now = datetime.now(UTC)
    holder: dict[str, Any] = {}

    def read(conn: Any, info: reads.ServerInfo, queues: list[str]) -> Any:
        holder["types"] = reads.job_types(conn)
        try:
            flt = args.to_filter(queues, now)
        except BadFilter as exc:
            holder["error"] = str(exc)
            return None
        holder["filter"] = flt
        if flt.id_prefix and (full := _job_id(flt.id_prefix)) is not None:
            holder["exact"] = full if reads.queues_of(conn, [full]) else None
        plan = flt.plan
        after = Cursor.decode(params.get("after", ""), plan) if params.get("after") else None
        before = Cursor.decode(params.get("before", ""), plan) if params.get("before") else None
        return reads.list_jobs(
            conn,
            flt,
            after=after,
            before=before,
            page_size=config.page_size,
            scan_limit=config.scan_limit,
        )

    result: reads.JobPage | None = await dashboard.load(page, read)
    error: str | None = holder.get("error")
    if holder.get("exact"):
        return _redirect(page, f"/jobs/{holder['exact']}")
    flt: JobFilter | None = holder.get("filter")
    plan = flt.plan if flt is not None else PLANS[None]
    return dashboard.render(
        page,
        "jobs.html",
        args=args,
        filter=flt,
        result=result,
        error=error,
        plan=plan,
        time_label=TIME_LABELS,
        job_types=holder.get("types", []),
        last_choices=list(LAST),
        message=_message(params),
        acts_on=ACTS_ON,
        status_filter=flt.status if flt is not None else None,
    )


# -- one job --


@_guarded
async def job(dashboard: Dashboard, page: Page) -> Response:
    job_id = _job_id(page.request.path_params["job_id"])
    show = dashboard.config.show_payloads

    def read(conn: Any, info: reads.ServerInfo, queues: list[str]) -> reads.JobDetail | None:
        return reads.job_detail(conn, job_id, show) if job_id is not None else None

    detail: reads.JobDetail | None = await dashboard.load(page, read)
    if detail is None or not _shown(dashboard, page, detail.queue):
        return dashboard.render(page, "not_found.html", status_code=404, job_id=job_id)
    confirm_delete = page.request.url.path.endswith("/delete")
    return dashboard.render(
        page,
        "job.html",
        job=detail,
        timeline=_timeline(detail),
        payload=reads.pretty_json(detail.payload),
        result=reads.pretty_json(detail.result),
        progress=reads.pretty_json(detail.progress),
        message=_message(page.request.query_params),
        confirm_delete=confirm_delete,
        acts_on=ACTS_ON,
    )


def _shown(dashboard: Dashboard, page: Page, queue: str) -> bool:
    """Whether this dashboard shows (and acts on) jobs of ``queue``: any queue when it
    discovers queues, else only those it was given."""
    return dashboard.config.discovering or queue in page.queues


@attrs.frozen
class Event:
    at: datetime
    what: str
    detail: str = ""
    kind: str = "info"


def _timeline(job: reads.JobDetail) -> list[Event]:
    events = [Event(job.created_at, "created", f"in {job.queue}, priority {job.priority}")]
    for a in job.attempts:
        if a.started_at is not None:
            events.append(Event(a.started_at, f"run {a.attempt} started", a.worker_id or ""))
        if a.finished_at is not None:
            kind = "good" if a.outcome == "completed" else "bad"
            if a.outcome in ("requeued", "snoozed", "cancelled"):
                kind = "info"
            events.append(Event(a.finished_at, f"run {a.attempt} {a.outcome}", a.error or "", kind))
    status = job.status
    if status is JobStatus.RUNNING and job.locked_at is not None:
        if not any(a.attempt == job.attempt for a in job.attempts):
            events.append(Event(job.locked_at, f"run {job.attempt} started", job.locked_by or ""))
        if job.heartbeat_at is not None:
            events.append(Event(job.heartbeat_at, "last heartbeat", job.locked_by or ""))
    elif status in (JobStatus.SCHEDULED, JobStatus.FAILED):
        events.append(
            Event(job.scheduled_at, "due" if status is JobStatus.SCHEDULED else "next try")
        )
    elif status is JobStatus.PENDING and job.scheduled_at > job.created_at + timedelta(seconds=1):
        events.append(Event(job.scheduled_at, "due"))
    elif status is JobStatus.DEAD and not any(a.outcome == "dead" for a in job.attempts):
        events.append(Event(job.updated_at, "dead", job.error_message or "", "bad"))
    elif status is JobStatus.CANCELLED:
        events.append(Event(job.updated_at, "cancelled"))
    elif (
        status is JobStatus.COMPLETED
        and job.completed_at is not None
        and not any(a.outcome == "completed" for a in job.attempts)
    ):
        events.append(Event(job.completed_at, "completed", "", "good"))
    events.sort(key=lambda e: e.at)
    return events


async def _job_action(dashboard: Dashboard, page: Page, form: FormData, what: str) -> Response:
    job_id = _job_id(page.request.path_params["job_id"])
    if job_id is None:
        raise HTTPException(404)

    def read(conn: Any) -> dict[str, str]:
        return reads.queues_of(conn, [job_id])

    queue = (await dashboard.db.run(read)).get(job_id)
    if queue is None or not _shown(dashboard, page, queue):
        return dashboard.render(page, "not_found.html", status_code=404, job_id=job_id)
    calls: dict[str, Callable[[Client], bool]] = {
        "retry": lambda c: c.retry_job(job_id),
        "cancel": lambda c: c.cancel_job(job_id),
        "delete": lambda c: c.delete_job(job_id),
    }
    done = await dashboard.actions().run(queue, calls[what])
    code = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}[what]
    if what == "delete" and done:
        return _redirect(page, "/jobs", {"queue": queue, "msg": code})
    return _redirect(page, f"/jobs/{job_id}", {"msg": code if done else f"not_{code}"})


@_action
async def job_retry(dashboard: Dashboard, page: Page, form: FormData) -> Response:
    return await _job_action(dashboard, page, form, "retry")


@_action
async def job_cancel(dashboard: Dashboard, page: Page, form: FormData) -> Response:
    return await _job_action(dashboard, page, form, "cancel")


@_action
async def job_delete(dashboard: Dashboard, page: Page, form: FormData) -> Response:
    return await _job_action(dashboard, page, form, "delete")


# -- bulk --


def _bulk_call(what: str) -> Callable[[list[str]], Callable[[Client], int]]:
    def bind(ids: list[str]) -> Callable[[Client], int]:
        if what == "retry":
            return lambda c: c.retry_jobs(ids)
        if what == "cancel":
            return lambda c: c.cancel_jobs(ids)
        return lambda c: c.delete_jobs(ids)

    return bind


@_action
async def jobs_bulk(dashboard: Dashboard, page: Page, form: FormData) -> Response:
    """Retry, cancel or delete the selected jobs (or all of the page), after a
    confirmation page."""
    do = str(form.get("do") or "")
    what, _, scope = do.partition(":")
    if what not in ACTS_ON or scope not in ("selected", "page"):
        raise HTTPException(400, "unknown action")
    # Not "id": that is the list's id-prefix filter, which the form carries too.
    field = "job" if scope == "selected" else "page_job"
    ids = sorted({i for v in form.getlist(field) if isinstance(v, str) and (i := _job_id(v))})
    args = ListArgs.read(form)
    back = args.params()
    if not ids:
        return _redirect(page, "/jobs", back)
    if len(ids) > MAX_BULK_IDS:
        raise HTTPException(400, f"at most {MAX_BULK_IDS} jobs at once")

    def read(conn: Any) -> dict[str, str]:
        return reads.queues_of(conn, ids)

    found = await dashboard.db.run(read)
    mine = [i for i in ids if i in found and _shown(dashboard, page, found[i])]
    if form.get("confirmed") != "yes":
        return dashboard.render(
            page,
            "confirm.html",
            what=what,
            count=len(mine),
            exact=True,
            ids=mine,
            description=f"{len(mine)} selected job{'s' if len(mine) != 1 else ''}",
            target=page.url("/jobs/bulk"),
            fields=[("do", do), ("confirmed", "yes")]
            + [(field, i) for i in mine]
            + [(k, v) for k, v in form.multi_items() if k in _FILTER_FIELDS],
            back=page.url("/jobs", back),
            limit=None,
        )
    total = 0
    if mine:
        queue = found[mine[0]]
        total = await dashboard.actions().run(queue, _bulk_call(what)(mine))
    return _redirect(page, "/jobs", {**back, "msg": f"bulk_{what}", "n": total})


_FILTER_FIELDS = ("queue", "status", "type", "from", "to", "last", "id", "order")


@_action
async def jobs_filter_action(dashboard: Dashboard, page: Page, form: FormData) -> Response:
    """Retry, cancel or delete every job of a filter (at most ``bulk_limit``): a
    confirmation page with the count, then the action, in batches of `BULK_BATCH`
    resolved by the list's own keyset query, one library call per batch. The
    confirmation fixes where it starts (the newest matching job then): jobs that match
    later are left alone."""
    config = dashboard.config
    what = str(form.get("action") or "")
    if what not in ACTS_ON:
        raise HTTPException(400, "unknown action")
    args = ListArgs.read(form)
    now = datetime.now(UTC)
    try:
        flt = args.to_filter(page.queues, now)
    except BadFilter as exc:
        raise HTTPException(400, str(exc)) from None
    back = args.params()
    if form.get("confirmed") != "yes":

        def count(conn: Any) -> reads.Matching:
            return reads.count_matching(
                conn, flt, at_most=config.bulk_limit + 1, scan_limit=config.scan_limit * 20
            )

        matching = await dashboard.db.run(count)
        frozen = args
        if args.last:
            # "last hour" as the absolute time it means now, so that the action covers
            # what was counted.
            frozen = attrs.evolve(args, last="", since=_iso(flt.since))
        return dashboard.render(
            page,
            "confirm.html",
            what=what,
            count=matching.count,
            exact=matching.complete,
            ids=[],
            description=args.describe(flt),
            target=page.url("/jobs/filter-action"),
            fields=[("action", what), ("confirmed", "yes")]
            + ([("start", matching.first.encode())] if matching.first else [])
            + [(k, v) for k, v in frozen.params().items() if v],
            back=page.url("/jobs", back),
            limit=config.bulk_limit,
        )
    start_text = form.get("start")
    start = Cursor.decode(start_text, flt.plan) if isinstance(start_text, str) else None
    if start is None:
        return _redirect(page, "/jobs", {**back, "msg": f"bulk_{what}", "n": 0})
    total, whole = await _apply_to_filter(dashboard, page, flt, start, what)
    code = f"bulk_{what}" if whole else f"bulk_{what}_part"
    return _redirect(page, "/jobs", {**back, "msg": code, "n": total})


async def _apply_to_filter(
    dashboard: Dashboard, page: Page, flt: JobFilter, start: Cursor, what: str
) -> tuple[int, bool]:
    """The action on the filter's jobs from ``start`` on: how many it changed, and
    whether it went through the whole filter (else it stopped at ``bulk_limit`` jobs,
    or after `BULK_BATCHES` batches of a filter that few rows match)."""
    config = dashboard.config
    cursor: Cursor | None = start
    inclusive = True
    acted = seen = batches = 0
    while cursor is not None and seen < config.bulk_limit and batches < BULK_BATCHES:
        batches += 1
        size = min(BULK_BATCH, config.bulk_limit - seen)
        read = functools.partial(
            reads.job_ids_batch,
            flt=flt,
            start=cursor,
            inclusive=inclusive,
            size=size,
            scan_limit=config.scan_limit,
        )
        rows, cursor = await dashboard.db.run(read)
        inclusive = False
        seen += len(rows)
        ids = [r.id for r in rows if _shown(dashboard, page, r.queue)]
        if ids:
            acted += await dashboard.actions().run(rows[0].queue, _bulk_call(what)(ids))
    return acted, cursor is None


# -- queues and cron --


def _queue_field(form: FormData, page: Page) -> str:
    queue = form.get("queue")
    if not isinstance(queue, str) or queue not in page.queues:
        raise HTTPException(400, "unknown queue")
    return queue


@_action
async def queue_pause(dashboard: Dashboard, page: Page, form: FormData) -> Response:
    queue = _queue_field(form, page)
    await dashboard.actions().run(queue, Client.pause)
    return _redirect(page, "/", {"msg": "paused", "q": queue})


@_action
async def queue_resume(dashboard: Dashboard, page: Page, form: FormData) -> Response:
    queue = _queue_field(form, page)
    await dashboard.actions().run(queue, Client.resume)
    return _redirect(page, "/", {"msg": "resumed", "q": queue})


@_action
async def cron_run(dashboard: Dashboard, page: Page, form: FormData) -> Response:
    queue = _queue_field(form, page)
    name = form.get("name")
    if not isinstance(name, str) or not name:
        raise HTTPException(400, "no cron entry named")
    job_id = await dashboard.actions().run(queue, lambda c: c.run_cron_now(name))
    return _redirect(page, f"/jobs/{job_id}", {"msg": "cron_run"})


# ---- the app ---------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    dashboard = _dashboard(request)
    page = await dashboard.page(request)
    detail = exc.detail if isinstance(exc.detail, str) else "error"
    return dashboard.render(
        page, "error.html", status_code=exc.status_code, title=f"{exc.status_code}", message=detail
    )


def create_app(config: DashboardConfig | None = None, **settings: Any) -> Starlette:
    """The dashboard as an ASGI application (Starlette), to serve or to mount.

    Give a `DashboardConfig`, or its fields as keyword arguments. Works under asyncio and
    trio alike. Its connections open on the first request; served on its own, its
    lifespan closes them, and mounted in another app, ``await
    app.state.kyu_dashboard.aclose()`` does (at that app's shutdown).

    Example::

        from fastapi import FastAPI
        from kyu_trio.dashboard import create_app

        api = FastAPI()
        api.mount("/kyu", create_app(dsn=os.environ["KYU_DSN"], read_only=True))
    """
    if config is None:
        config = DashboardConfig(**settings)
    elif settings:
        config = attrs.evolve(config, **settings)
    dashboard = Dashboard(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dashboard.aclose()

    static = StaticFiles(directory=str(resources.files("kyu_trio.dashboard") / "static"))
    routes = [
        Route("/", overview, name="overview"),
        Route("/live/overview", overview_live, name="overview_live"),
        Route("/jobs", jobs, name="jobs"),
        Route("/jobs/bulk", jobs_bulk, methods=["POST"], name="jobs_bulk"),
        Route("/jobs/filter-action", jobs_filter_action, methods=["POST"], name="filter_action"),
        Route("/jobs/{job_id}", job, name="job"),
        Route("/jobs/{job_id}/delete", job, name="job_delete_confirm"),
        Route("/jobs/{job_id}/retry", job_retry, methods=["POST"], name="job_retry"),
        Route("/jobs/{job_id}/cancel", job_cancel, methods=["POST"], name="job_cancel"),
        Route("/jobs/{job_id}/delete", job_delete, methods=["POST"], name="job_delete"),
        Route("/queues/pause", queue_pause, methods=["POST"], name="queue_pause"),
        Route("/queues/resume", queue_resume, methods=["POST"], name="queue_resume"),
        Route("/cron/run", cron_run, methods=["POST"], name="cron_run"),
        Mount("/static", app=static, name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if config.auth is not None:
        middleware.append(Middleware(Authentication, auth=config.auth))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.kyu_dashboard = dashboard
    return app
