"""The dashboard served for real: ``kyu-trio dashboard`` (Hypercorn on trio) in a
subprocess, its refusals, the app mounted in a FastAPI app under asyncio, and
examples/dashboard.py."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kyu_trio import Client, Config
from kyu_trio._cli._dashboard import _loopback
from kyu_trio.dashboard import create_app
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KYU_TRIO = [sys.executable, "-m", "kyu_trio"]


@pytest.fixture
def cli_env(pg_dsn: str, redis_url: str, queue_name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYU_DASHBOARD_")}
    return {**env, "KYU_DSN": pg_dsn, "KYU_REDIS_URL": redis_url, "KYU_QUEUE": queue_name}


@pytest.fixture
def start_cli(
    cli_env: dict[str, str],
) -> Iterator[Callable[..., tuple[str, subprocess.Popen[str]]]]:
    """``start_cli(*args, env=...)``: ``kyu-trio dashboard --port <free> ARGS`` running,
    listening; killed at the end if still running."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen[str]]:
        port = free_port()
        proc = subprocess.Popen(
            [*KYU_TRIO, "dashboard", "--port", str(port), *args],
            cwd=ROOT,
            env={**cli_env, **(env or {})},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"http://127.0.0.1:{port}", proc
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not start listening"
                time.sleep(0.05)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_cli_serves_and_stops_on_sigterm(
    start_cli: Callable[..., tuple[str, subprocess.Popen[str]]], queue_name: str, make_config: Any
) -> None:
    with Client(make_config()) as client:
        job_id = client.enqueue("send_email", "ada@example.com")
    base, proc = start_cli()
    status, page = get(base + "/")
    assert status == 200
    assert queue_name in page and 'data-count="1"' in page
    status, page = get(f"{base}/jobs/{job_id}")
    assert status == 200 and "send_email" in page
    status, _ = get(base + "/static/dashboard.js")
    assert status == 200
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"kyu-trio dashboard on {base}" in err
    assert "WARNING" not in err


def test_cli_basic_auth_from_the_environment(
    start_cli: Callable[..., tuple[str, subprocess.Popen[str]]],
) -> None:
    base, _ = start_cli(
        "--auth", "basic", env={"KYU_DASHBOARD_USER": "ops", "KYU_DASHBOARD_PASSWORD": "pw-123"}
    )
    status, _ = get(base + "/")
    assert status == 401
    wrong = "Basic " + base64.b64encode(b"ops:nope").decode()
    assert get(base + "/", {"Authorization": wrong})[0] == 401
    right = "Basic " + base64.b64encode(b"ops:pw-123").decode()
    assert get(base + "/", {"Authorization": right})[0] == 200


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--auth", "basic"], {}, "KYU_DASHBOARD_USER and KYU_DASHBOARD_PASSWORD"),
        (["--auth", "basic"], {"KYU_DASHBOARD_USER": "ops"}, "KYU_DASHBOARD_PASSWORD"),
        (["--auth", "bearer"], {}, "KYU_DASHBOARD_TOKEN"),
        (["--auth", "bearer"], {"KYU_DASHBOARD_TOKEN": "short"}, "at least 16 characters"),
        (["--queue", "bad name"], {}, "invalid queue name"),
    ],
)
def test_cli_refuses_to_start(
    cli_env: dict[str, str], args: list[str], env: dict[str, str], said: str
) -> None:
    proc = subprocess.run(
        [*KYU_TRIO, "dashboard", "--port", "0", *args],
        env={**cli_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (1, 2), proc
    assert proc.stderr.startswith("error: ") and said in proc.stderr, proc.stderr


def test_cli_warns_without_auth_off_loopback(
    start_cli: Callable[..., tuple[str, subprocess.Popen[str]]],
) -> None:
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("10.1.2.3") and not _loopback("ops.example")
    _, proc = start_cli("--host", "0.0.0.0")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert "WARNING: the dashboard listens on 0.0.0.0, not a loopback address, WITHOUT" in err


def test_mounted_in_fastapi_under_asyncio(config_for_mount: Config) -> None:
    """The app runs on asyncio too (anyio only), mounted under a prefix: its links,
    cookie and redirects carry the prefix."""
    from fastapi import FastAPI

    api = FastAPI()
    dashboard = create_app(
        dsn=config_for_mount.dsn,
        redis_url=config_for_mount.redis_url,
        queues=[config_for_mount.queue_name],
    )
    api.mount("/kyu", dashboard)

    async def visit() -> tuple[httpx.Response, httpx.Response, bool]:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            page = await client.get("/kyu/")
            token = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page.text)
            assert token is not None
            answer = await client.post(
                "/kyu/queues/pause",
                data={"queue": config_for_mount.queue_name, "csrf_token": token.group(1)},
                headers={"Origin": "http://app"},
            )
        await dashboard.state.kyu_dashboard.aclose()
        with Client(config_for_mount) as client_:
            paused = client_.is_paused()
        return page, answer, paused

    page, answer, paused = asyncio.run(visit())
    assert page.status_code == 200
    assert 'href="/kyu/static/dashboard.css' in page.text and 'href="/kyu/jobs' in page.text
    assert "path=/kyu/" in page.headers["set-cookie"].lower()
    assert answer.status_code == 303 and answer.headers["location"].startswith("/kyu/?msg=paused")
    assert paused


@pytest.fixture
def config_for_mount(make_config: Callable[..., Config]) -> Iterator[Config]:
    config = make_config()
    with Client(config) as client:  # migrates the database
        client.resume()
    yield config


def test_the_dashboard_example(
    run_example: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    out = run_example("dashboard.py", "--self-test").stdout
    assert "the application's own page: the application; its jobs are under /kyu/" in out
    assert "overview: 2 scheduled, 1 completed, 1 dead" in out
    assert "dead jobs listed: 1" in out
    assert "dead job's error: RuntimeError: card declined for order 42" in out
    assert "OK: the dashboard shows the queue" in out
