"""The whole browser chain on a tiny app: Debian's chromium, Playwright, Hypercorn on trio.

If this passes on a fresh machine after ./scripts/setup.sh, browser tests can be written.
"""

from __future__ import annotations

import html
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="starlette is missing: pip install -e '.[dev]'")
pytest.importorskip("playwright", reason="playwright is missing: pip install -e '.[dev]'")

from playwright.sync_api import Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.browser.conftest import serve_asgi

INDEX = """<!doctype html>
<html><head><title>Smoke</title></head>
<body>
  <h1>Smoke test</h1>
  <p id="message">Not clicked yet</p>
  <button id="greet" type="button">Greet</button>
  <form method="post" action="/echo">
    <label for="name">Name</label> <input id="name" name="name">
    <button type="submit">Send</button>
  </form>
  <script>
    document.getElementById("greet").addEventListener("click", () => {
      document.getElementById("message").textContent = "Hello from JavaScript";
    });
  </script>
</body></html>
"""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_app(posted: list[str], lifespan_events: list[str]) -> Starlette:
    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(INDEX)

    async def echo(request: Request) -> HTMLResponse:
        form = await request.form()
        name = str(form["name"])
        posted.append(name)
        return HTMLResponse(
            f"<!doctype html><title>Echo</title><p id='result'>Posted: {html.escape(name)}</p>"
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        lifespan_events.append("startup")
        yield
        lifespan_events.append("shutdown")

    return Starlette(
        routes=[Route("/", index), Route("/echo", echo, methods=["POST"])], lifespan=lifespan
    )


def test_click_form_post_and_screenshot(
    page: Page, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    posted: list[str] = []
    events: list[str] = []
    url = live_server(make_app(posted, events))
    assert url.startswith("http://127.0.0.1:")
    assert events == ["startup"]

    page.goto(url + "/")
    expect(page.locator("#message")).to_have_text("Not clicked yet")
    before = page.screenshot()
    page.get_by_role("button", name="Greet").click()
    expect(page.locator("#message")).to_have_text("Hello from JavaScript")
    shot = tmp_path / "clicked.png"
    page.screenshot(path=str(shot))

    # Markup typed into the form comes back escaped, so the browser shows it as text.
    page.get_by_label("Name").fill("<b>Ada</b>")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#result")).to_have_text("Posted: <b>Ada</b>")
    assert page.url == url + "/echo"
    assert posted == ["<b>Ada</b>"]  # one real POST reached the server, form-encoded

    # The screenshot taken after the click, as a file: a PNG of the viewport's size, with
    # text on it (a blank page of that size is under 5 kB, this one about 12 kB), and
    # not the picture from before the click.
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 800)
    assert len(data) > 8_000
    assert before[:8] == PNG_MAGIC
    assert data != before


def test_live_server_runs_lifespan_and_stops() -> None:
    """The server thread starts and stops the app's lifespan and frees its port."""
    events: list[str] = []
    with serve_asgi(make_app([], events)) as url:
        assert events == ["startup"]
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    assert events == ["startup", "shutdown"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_live_server_reports_a_failed_startup() -> None:
    """An app whose lifespan startup fails stops the server at once, with that error."""

    @asynccontextmanager
    async def failing(app: Starlette) -> AsyncIterator[None]:
        raise ValueError("no database")
        yield

    with (
        pytest.raises(RuntimeError, match=r"(?s)failed its lifespan startup.*no database"),
        serve_asgi(Starlette(lifespan=failing)),
    ):
        pytest.fail("the server started")
