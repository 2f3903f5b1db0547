"""The web dashboard next to a served queue, in one trio program::

    .venv/bin/python examples/dashboard.py              # then open http://127.0.0.1:8080/kyu/
    .venv/bin/python examples/dashboard.py --self-test  # checks the pages over HTTP, exits

It enqueues a few jobs (one that completes, one that fails and ends dead, two scheduled
for later), serves the queue with `Queue.serve`, and serves a small Starlette app with
`kyu_trio.dashboard`'s app mounted under ``/kyu`` (as in any Starlette or FastAPI app),
with Hypercorn on trio, in the same nursery. The dashboard reads on its own small pool,
so it never takes a connection from the workers. Ctrl-C (or SIGTERM) stops both.
``--self-test`` serves on a free port, fetches the overview, the list of dead jobs and a
job page, prints what they show, and stops.

It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0`` unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the
queue ``kyu:dashboard-demo`` unless KYU_QUEUE says otherwise; the port is 8080 unless
KYU_DASHBOARD_PORT says otherwise. Needs the ``dashboard`` extra.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from kyu_trio import Config, Queue
from kyu_trio.dashboard import create_app


def config() -> Config:
    defaults = {
        "dsn": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
        "queue_name": "kyu:dashboard-demo",
    }
    set_by_env = {"dsn": "KYU_DSN", "redis_url": "KYU_REDIS_URL", "queue_name": "KYU_QUEUE"}
    overrides = {k: v for k, v in defaults.items() if not os.environ.get(set_by_env[k])}
    return Config.from_env(**overrides, metrics_port=0, shutdown_grace=2.0)


# [mount]
def web_app(config: Config) -> Starlette:
    """An application of one's own, with the dashboard under /kyu (FastAPI: the same
    ``app.mount("/kyu", dashboard)``)."""
    dashboard = create_app(
        dsn=config.dsn,
        redis_url=config.redis_url,
        queues=[config.queue_name],
        # read_only=True, auth=BasicAuth(user, password), show_payloads=True, ...
    )

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("the application; its jobs are under /kyu/\n")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            # A mounted app gets no lifespan events of its own: close its connections.
            await dashboard.state.kyu_dashboard.aclose()

    return Starlette(routes=[Route("/", home), Mount("/kyu", dashboard)], lifespan=lifespan)


# [/mount]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


async def self_test(base: str, dead_id: str) -> None:
    """What an operator opening the pages would see, checked."""
    home = await trio.to_thread.run_sync(fetch, base.removesuffix("/kyu") + "/")
    print("the application's own page:", home.strip())
    overview = await trio.to_thread.run_sync(fetch, base + "/")
    counts = dict(re.findall(r'data-testid="count-(\w+)" data-count="(\d+)"', overview))
    print("overview:", ", ".join(f"{n} {status}" for status, n in counts.items() if n != "0"))
    dead = await trio.to_thread.run_sync(fetch, base + "/jobs?status=dead")
    print("dead jobs listed:", dead.count('data-testid="job-row"'))
    page = await trio.to_thread.run_sync(fetch, f"{base}/jobs/{dead_id}")
    error = re.search(r'data-testid="attempt-error">([^<]+)<', page)
    print("dead job's error:", error.group(1) if error else None)
    assert counts["completed"] == "1" and counts["dead"] == "1", counts
    assert counts["scheduled"] == "2", counts
    print("OK: the dashboard shows the queue")


async def check_pages(
    queue: Queue, nursery: trio.Nursery, base: str, mail_id: str, dead_id: str
) -> None:
    """--self-test: serve until the first two jobs have ended, look at the pages, stop."""
    nursery.start_soon(queue.serve)
    with trio.fail_after(30):
        for job_id, status in ((mail_id, "completed"), (dead_id, "dead")):
            # An example: a plain poll of the job reads best.
            while (await queue.inspect(job_id)).status.value != status:  # noqa: ASYNC110
                await trio.sleep(0.05)
    await self_test(base, dead_id)
    queue.shutdown()


async def main(self_testing: bool) -> None:
    queue = Queue(config())

    @queue.handler("send_email")
    async def send_email(to: str) -> None:
        pass  # send the mail here

    @queue.handler("charge_card")
    async def charge_card(order: int) -> None:
        raise RuntimeError(f"card declined for order {order}")

    port = 0 if self_testing else int(os.environ.get("KYU_DASHBOARD_PORT", "8080"))
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"127.0.0.1:{port}"]
    hypercorn.accesslog = None
    app = web_app(queue.config)
    async with queue:
        mail_id = await queue.enqueue("send_email", "ada@example.com")
        dead_id = await queue.enqueue("charge_card", 42, max_retries=0)
        later = datetime.now(UTC) + timedelta(hours=1)
        for hour in range(2):
            due = later + timedelta(hours=hour)
            await queue.enqueue("send_email", "grace@example.com", scheduled_at=due)

        # [serve]
        stopped = trio.Event()
        async with trio.open_nursery() as nursery:
            # Hypercorn serves the app on trio, next to the workers, until `stopped`.
            urls = await nursery.start(
                partial(serve, app, hypercorn, shutdown_trigger=stopped.wait)
            )
            base = urls[0] + "/kyu"
            print(f"dashboard on {base}/ (Ctrl-C stops it)", flush=True)
            if self_testing:
                await check_pages(queue, nursery, base, mail_id, dead_id)
            else:
                await queue.serve()  # until Ctrl-C or SIGTERM
            stopped.set()
        # [/serve]


if __name__ == "__main__":
    trio.run(main, "--self-test" in sys.argv[1:])
