"""Fixtures for tests in a real browser: Playwright driving Debian's chromium.

No browser is ever downloaded (never ``playwright install``): ``scripts/setup.sh`` installs
Debian's ``chromium`` with apt, and Playwright starts it through ``executable_path``. Where
there is no chromium (or no ``playwright`` package) the tests here are skipped, saying why.

Why plain (sync) test functions with Playwright's sync API, and the app in a thread:

- The suite runs under pytest-trio with ``trio_mode = true``, but only ``async def`` tests
  run in a trio loop; a plain ``def`` test is an ordinary test. Playwright's async API is
  asyncio-only, and its sync API, called inside a trio test, would block that test's loop
  (and with it any server or worker running in it) for every click.
- So browser tests are plain functions using the sync API, and the server under test runs
  in a background thread with its own trio loop (``live_server``): the browser and the
  server never share a loop, and each waits on its own.
- Playwright's sync API keeps an asyncio loop that it marks as *running* in the main
  thread between calls, for as long as Playwright is started. Any later test calling
  ``asyncio.run`` (the uvloop and trio-asyncio tests do) would then fail with "cannot be
  called from a running event loop". The browser is therefore scoped to this package
  (``scope="package"``), not to the session: one Playwright and one chromium for all
  tests under ``tests/browser``, stopped before pytest moves on to the other directories.
  Put browser tests in this directory.

Fixtures:

- ``chromium_path``: the browser binary: ``$KYU_TEST_CHROMIUM``, else ``chromium`` on
  ``PATH``, else ``/usr/bin/chromium``.
- ``browser``: one headless chromium for the package (``--no-sandbox`` only as root,
  where chromium's sandbox cannot start).
- ``page``: a fresh context (cookies, storage) and page per test, 10 s default timeout,
  1280x800 viewport. When the test fails, a screenshot of the page, the browser console's
  errors and the page's uncaught exceptions are added to the failure report.
- ``live_server``: ``live_server(app)`` serves any ASGI app with Hypercorn on a free port
  of 127.0.0.1 in a background thread and returns its base URL; stopped (ASGI lifespan
  shutdown included) at the end of the test. ``serve_asgi(app)``, the context manager
  behind it, serves for a longer scope (e.g. in a module-scoped fixture).

Data for a browser test: a plain test can use the sync fixtures of ``tests/conftest.py``
(``pg_dsn``, ``redis_url``, ``make_config``) and run kyu's async API with ``trio.run(...)``
between page calls; what must run beside the server for the whole test (a worker) belongs
in the served app's lifespan, in the server's trio loop.

Example::

    def test_title(page: Page, live_server: Callable[[ASGIApp], str]) -> None:
        url = live_server(make_app())
        page.goto(url)
        expect(page.locator("h1")).to_have_text("Overview")
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize

#: Default timeout of every Playwright action, navigation and ``expect`` (ms).
TIMEOUT_MS = 10_000
#: Viewport of every page: fixed, so that screenshots are the same from run to run.
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
#: How long starting or stopping a ``live_server`` may take (s).
SERVER_TIMEOUT = 10.0

_PAGE_KEY = pytest.StashKey["Page"]()
_LOG_KEY = pytest.StashKey[list[str]]()
_SHOT_DIR_KEY = pytest.StashKey[Path]()

ASGIApp = Callable[..., Any]


# ---- the browser ----------------------------------------------------------------------


def find_chromium() -> str | None:
    """The chromium to drive: ``$KYU_TEST_CHROMIUM``, ``chromium`` on PATH, /usr/bin/chromium."""
    explicit = os.environ.get("KYU_TEST_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The path of Debian's chromium; the test is skipped (saying how to get one) without it."""
    path = find_chromium()
    if path is None:
        explicit = os.environ.get("KYU_TEST_CHROMIUM")
        if explicit:
            pytest.skip(f"KYU_TEST_CHROMIUM={explicit} is not an executable file")
        pytest.skip(
            "no chromium found (neither `chromium` on PATH nor /usr/bin/chromium): run "
            "./scripts/setup.sh, which installs Debian's package, or set KYU_TEST_CHROMIUM"
        )
    return path


@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[Browser]:
    """One headless chromium for every test of this package (see the module docstring)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the `playwright` package is missing: pip install -e '.[dev]'"
    )
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        # Chromium's sandbox cannot start as root: Playwright passes --no-sandbox exactly
        # when chromium_sandbox is false. Otherwise the sandbox stays on, as for a user.
        browser = playwright.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            chromium_sandbox=os.geteuid() != 0,
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(
    browser: Browser,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    live_server: Callable[[ASGIApp], str],
) -> Iterator[Page]:
    """A page in a fresh browser context; screenshot and console in the report on failure.

    It depends on ``live_server`` only so that pytest closes the page before it stops the
    test's servers: a server stopping under open connections waits for them.
    """
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    log: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            log.append(f"console.{msg.type}: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: log.append(f"uncaught exception: {exc}"))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    request.node.stash[_PAGE_KEY] = page
    request.node.stash[_LOG_KEY] = log
    request.node.stash[_SHOT_DIR_KEY] = tmp_path_factory.mktemp(f"browser-{name}")
    try:
        yield page
    finally:
        del request.node.stash[_PAGE_KEY]
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Any:
    """On a failed browser test, add a screenshot of its page (path) and its console."""
    report = yield
    if report.when == "call" and report.failed and _PAGE_KEY in item.stash:
        page = item.stash[_PAGE_KEY]
        shot = item.stash[_SHOT_DIR_KEY] / "failure.png"
        lines = [f"page: {page.url}"]
        try:
            # A short timeout: the page may be what hangs.
            page.screenshot(path=str(shot), full_page=True, timeout=5_000)
            lines.append(f"screenshot: {shot}")
        except Exception as exc:  # the report matters more than the picture
            lines.append(f"screenshot failed: {exc!r}")
        log: list[str] = item.stash[_LOG_KEY]
        lines.extend(log)
        report.sections.append(("browser", "\n".join(lines)))
    return report


# ---- the server under test ------------------------------------------------------------


@contextlib.contextmanager
def serve_asgi(app: ASGIApp, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` with Hypercorn in a thread with its own trio loop; yield its base URL.

    The port is chosen by the kernel when Hypercorn binds (``port 0``), so no other
    process can take it in between. On exit the server shuts down gracefully (ASGI
    lifespan shutdown included), and an error of the server thread is raised here.
    """
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    config = HypercornConfig()
    config.bind = [f"{host}:0"]
    # Connections still open at shutdown (a page left open) are cut after this long.
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.loglevel = "WARNING"  # not "Running on ..." in every test's captured output

    started = threading.Event()
    state: dict[str, Any] = {}
    startup_failed: list[str] = []

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        # Hypercorn starts serving even as the app reports a failed lifespan startup,
        # and raises only later: seen here, the failure stops the server at once.
        async def watch(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed":
                startup_failed.append(str(message.get("message", "")))
            await send(message)

        await app(scope, receive, watch if scope["type"] == "lifespan" else send)

    async def main() -> None:
        stop = trio.Event()
        state["stop"] = stop
        state["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    watched, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            if startup_failed:  # reported by the test's thread
                nursery.cancel_scope.cancel()
                return
            state["url"] = binds[0]
            started.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # handed to the test's thread, raised there
            state["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=run, name=f"live_server {host}", daemon=True)
    thread.start()
    if not started.wait(SERVER_TIMEOUT):
        raise RuntimeError(f"the live server did not start within {SERVER_TIMEOUT} s")
    if startup_failed or "error" in state:
        thread.join(SERVER_TIMEOUT)
        if startup_failed:
            message = startup_failed[0]
            raise RuntimeError(f"the live server's app failed its lifespan startup:\n{message}")
        raise RuntimeError("the live server failed to start") from state["error"]
    try:
        yield str(state["url"])
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
        thread.join(SERVER_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"the live server did not stop within {SERVER_TIMEOUT} s")
        if "error" in state:
            raise RuntimeError("the live server failed") from state["error"]


@pytest.fixture
def live_server() -> Iterator[Callable[[ASGIApp], str]]:
    """``live_server(app)`` serves an ASGI app on 127.0.0.1 until the test ends; its base URL.

    Example::

        url = live_server(app)  # "http://127.0.0.1:41234"
        page.goto(url + "/jobs")
    """
    pytest.importorskip("hypercorn", reason="hypercorn is missing: pip install -e '.[dev]'")
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_asgi(app))


def with_tasks(app: ASGIApp, *tasks: Callable[..., Any]) -> ASGIApp:
    """``app``, whose ASGI lifespan also runs ``tasks``: each is started with
    ``nursery.start(task)`` (so it is ready, e.g. a `Queue.serve` with its workers up) before
    the app's own startup, in the server's trio loop, and cancelled after its shutdown.

    A task that fails to start fails the lifespan startup (``serve_asgi`` raises it).

    Example::

        with serve_asgi(with_tasks(create_app(dsn=dsn), queue.serve)) as url:
            ...  # the dashboard, and a worker serving the queue beside it
    """

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        first = await receive()  # lifespan.startup
        async with trio.open_nursery() as nursery:
            try:
                for task in tasks:
                    await nursery.start(task)
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                nursery.cancel_scope.cancel()
                return
            replay = [first]

            async def receive_again() -> Any:
                return replay.pop() if replay else await receive()

            await app(scope, receive_again, send)
            nursery.cancel_scope.cancel()

    return wrapped
