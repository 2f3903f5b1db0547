"""Secrets stay secret and names stay names.

- A password in the PostgreSQL DSN or the Redis URL never shows up in an error, in a
  traceback, in any log record (every logger, at DEBUG) or in ``repr(Config)``.
- Queue names are checked before anything reaches Redis: characters that mean something
  to Redis or its protocol (spaces, CR/LF, glob characters, cluster hash tags, ``~`` of
  the marker key, quotes, NUL...) are refused by `Config`.
- Payloads are not logged unless ``Config.log_payloads=True``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import psycopg
import pytest
import redis
import trio
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from kyu_trio import Config, ConfigError, KyuConnectionError, Queue
from kyu_trio._cli import cli
from tests.conftest import ThrowawayRedis, free_port
from tests.unit.dsn_corpus import POSTGRES_FORMS, REDIS_FORMS, fill, leaked
from tests.unit.dsn_corpus import A as CORPUS_A
from tests.unit.dsn_corpus import B as CORPUS_B

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55w0rd"
WRONG = "wr0ng-Pa55w0rd"
SECRETS = (SECRET, WRONG, "s3cr3t%40x", "s3cr3t@x")


def everything_about(exc: BaseException) -> str:
    """The message, repr and formatted traceback of ``exc`` and of every exception
    chained to it (even a suppressed ``__context__``)."""
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current), *map(str, current.args)]
        parts += traceback.format_exception(current)
        todo += [current.__cause__, current.__context__]
    return "\n".join(parts)


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(everything_about(record.exc_info[1]))
    return "\n".join(parts)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked:\n{text[:3000]}"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture every logger (kyu_trio, psycopg, psycopg.pool, redis...) at DEBUG."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def pg_forms(port: int) -> list[str]:
    return [
        f"postgresql://kyu:{SECRET}@127.0.0.1:{port}/app",
        f"postgres://kyu:{SECRET}@127.0.0.1:{port}/app?sslmode=disable",
        f"postgresql://kyu@127.0.0.1:{port}/app?password={SECRET}",
        f"postgresql://kyu:s3cr3t%40x@127.0.0.1:{port}/app",
        f"host=127.0.0.1 port={port} user=kyu password={SECRET} dbname=app",
        f"host=127.0.0.1 port={port} user=kyu password='{SECRET} with spaces' dbname=app",
    ]


def redis_forms(port: int) -> list[str]:
    return [
        f"redis://:{SECRET}@127.0.0.1:{port}/0",
        f"redis://default:{SECRET}@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password={SECRET}",
    ]


# ---- passwords in errors and logs ----------------------------------------------------------


@pytest.mark.parametrize("form", range(len(pg_forms(1))))
async def test_unreachable_postgres_never_shows_the_password(
    form: int, redis_url: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    dsn = pg_forms(port)[form]
    config = Config(dsn=dsn, redis_url=redis_url, metrics_port=0)
    queue = Queue(config)
    with pytest.raises(KyuConnectionError) as info:
        await queue.connect()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_no_secret(everything_about(info.value))
    assert_no_secret(everything_logged(debug_logs))
    assert_no_secret(repr(config) + str(config) + repr(queue))


@pytest.mark.parametrize("form", range(len(redis_forms(1))))
async def test_unreachable_redis_never_shows_the_password(
    form: int, pg_dsn: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    config = Config(dsn=pg_dsn, redis_url=redis_forms(port)[form], metrics_port=0)
    queue = Queue(config)
    with pytest.raises(KyuConnectionError) as info:
        await queue.connect()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_no_secret(everything_about(info.value))
    assert_no_secret(everything_logged(debug_logs))
    assert_no_secret(repr(config) + str(config) + repr(queue))


class PasswordRedis(ThrowawayRedis):
    """A throwaway redis-server that requires ``SECRET``."""

    def __init__(self) -> None:
        super().__init__(password=SECRET)

    def url(self, password: str = SECRET) -> str:  # type: ignore[override]
        return f"redis://:{password}@127.0.0.1:{self.port}/0"


@pytest.fixture
def password_redis() -> Iterator[PasswordRedis]:
    server = PasswordRedis()
    server.start()
    yield server
    server.stop()


async def test_wrong_redis_password_is_not_shown(
    pg_dsn: str, password_redis: PasswordRedis, debug_logs: pytest.LogCaptureFixture
) -> None:
    queue = Queue(Config(dsn=pg_dsn, redis_url=password_redis.url(WRONG), metrics_port=0))
    with pytest.raises(KyuConnectionError) as info:
        await queue.connect()
    assert f"127.0.0.1:{password_redis.port}" in str(info.value)
    assert_no_secret(everything_about(info.value))
    assert_no_secret(everything_logged(debug_logs))


async def test_serving_through_an_outage_never_logs_a_password(
    make_config: Callable[..., Config],
    pg_dsn: str,
    password_redis: PasswordRedis,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """Serve with passwords in both URLs (the test PostgreSQL trusts local connections,
    so it ignores its password), lose Redis for a while, and read every log record."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, password=SECRET)
    config = make_config(
        dsn=dsn, redis_url=password_redis.url(), workers=2, scheduler_interval=0.2,
        reaper_interval=0.3, heartbeat_interval=0.2, stale_job_timeout=1.0,
    )  # fmt: skip
    queue = Queue(config)
    done = 0
    all_done = trio.Event()

    @queue.handler("t")
    async def t(payload: str) -> None:
        nonlocal done
        done += 1
        if done == 20:
            all_done.set()

    async with queue, trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        await queue.enqueue_many([("t", str(i)) for i in range(10)])
        await trio.to_thread.run_sync(password_redis.stop)
        await trio.sleep(1.5)  # the fetcher, scheduler and reaper all hit the outage
        await queue.enqueue_many([("t", str(i)) for i in range(10, 20)])  # push fails
        await trio.to_thread.run_sync(password_redis.start)
        with trio.fail_after(30):
            await all_done.wait()
        queue.shutdown()
    logged = everything_logged(debug_logs)
    assert "retrying with backoff" in logged  # the outage was logged...
    assert_no_secret(logged)  # ...without a password
    assert_no_secret(repr(config) + repr(queue))


# ---- the corpus of shapes: connecting, and the command line ---------------------------------


def _accepted(forms: list[str], field: str, host: str, port: int) -> list[str]:
    accepted = []
    for form in forms:
        try:
            Config(**{field: fill(form, host, port)})
        except ConfigError:
            continue
        accepted.append(form)
    return accepted


PG_ACCEPTED = _accepted(POSTGRES_FORMS, "dsn", "127.0.0.1", 6543)
REDIS_ACCEPTED = _accepted(REDIS_FORMS, "redis_url", "127.0.0.1", 6543)


@pytest.mark.parametrize("form", PG_ACCEPTED)
async def test_every_postgres_shape_connecting_never_shows_the_password(
    form: str, redis_url: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    config = Config(dsn=fill(form, "127.0.0.1", free_port()), redis_url=redis_url, metrics_port=0)
    queue = Queue(config)
    with pytest.raises(KyuConnectionError) as info:
        await queue.connect()
    assert leaked(everything_about(info.value)) == []
    assert leaked(everything_logged(debug_logs)) == []
    assert leaked(repr(config) + str(config) + repr(queue)) == []


@pytest.mark.parametrize("form", REDIS_ACCEPTED)
async def test_every_redis_shape_connecting_never_shows_the_password(
    form: str, pg_dsn: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    config = Config(dsn=pg_dsn, redis_url=fill(form, "127.0.0.1", free_port()), metrics_port=0)
    queue = Queue(config)
    with pytest.raises(KyuConnectionError) as info:
        await queue.connect()
    assert leaked(everything_about(info.value)) == []
    assert leaked(everything_logged(debug_logs)) == []
    assert leaked(repr(config) + str(config) + repr(queue)) == []


def _cli(*args: str, **env: str) -> Result:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(
        cli, list(args), env={"KYU_METRICS_PORT": "0", **env}, catch_exceptions=False
    )


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("field", "form"),
    [
        *(("--dsn", form) for form in POSTGRES_FORMS),
        *(("--redis-url", form) for form in REDIS_FORMS),
    ],
)
def test_the_command_line_never_shows_the_password(
    field: str,
    form: str,
    pg_dsn: str,
    redis_url: str,
    queue_name: str,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """Malformed shapes fail in Config, the others while connecting to a free port:
    either way one error line, and no piece of the password in it or in the logs."""
    env = {"KYU_DSN": pg_dsn, "KYU_REDIS_URL": redis_url, "KYU_QUEUE": queue_name}
    value = fill(form, "127.0.0.1", free_port())
    commands = [("stats", "--json"), ("enqueue", "t", "p")]
    if field == "--dsn":
        commands.append(("migrate",))
    for command in commands:
        line = _one_error_line(_cli(*command, field, value, **env))
        assert leaked(line) == [], line
    assert leaked(everything_logged(debug_logs)) == []


@pytest.mark.parametrize(
    ("option", "form"),
    [
        ("--dsn", "postgresql://kyu:" + CORPUS_A + "@" + CORPUS_B + "@127.0.0.1:{port}/app"),
        ("--dsn", "host=127.0.0.1 port={port} password=" + CORPUS_A + " " + CORPUS_B),
        ("--dsn", "postgresql://kyu:" + CORPUS_A + "@127.0.0.1:{port}/app"),
        ("--redis-url", "redis://:" + CORPUS_A + "/" + CORPUS_B + "@127.0.0.1:{port}/0"),
    ],
)
def test_a_real_process_never_shows_the_password(option: str, form: str) -> None:
    """`python -m kyu_trio` itself: no traceback, no password, on stdout or stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYU_")}
    proc = subprocess.run(
        [sys.executable, "-m", "kyu_trio", "jobs", option, fill(form, port=free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert proc.stderr.startswith("error: ") and output.count("\n") == 1, output
    assert leaked(output) == [], output


# ---- repr(Config) and configuration errors --------------------------------------------------


@pytest.mark.parametrize("dsn", pg_forms(5432))
@pytest.mark.parametrize("url", redis_forms(6379))
def test_repr_config_masks_passwords(dsn: str, url: str) -> None:
    config = Config(dsn=dsn, redis_url=url)
    assert_no_secret(repr(config) + str(config) + repr(attrs.evolve(config, workers=2)))
    assert "***" in repr(config)


@pytest.mark.parametrize(
    "env",
    [
        {"KYU_DSN": f"postgresql://kyu:{SECRET}@db:notaport/app"},
        {"KYU_DSN": f"postgresql://kyu:{SECRET}@db/app", "KYU_WORKERS": "many"},
        {"KYU_DSN": f"host=db password={SECRET} port=x"},
        {"KYU_REDIS_URL": f"http://:{SECRET}@cache:6379/0"},
        {"KYU_REDIS_URL": f"redis://:{SECRET}@cache:notaport/0"},
        {"KYU_REDIS_URL": f"redis://:{SECRET}@cache:6379/notadb"},
    ],
)
def test_configuration_errors_never_show_the_password(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert_no_secret(everything_about(info.value))


# ---- queue names ------------------------------------------------------------------------

#: Characters with a meaning to Redis, its protocol or kyu-trio's own keys.
REDIS_SPECIAL = set(" \t\r\n\x00*?[]{}~\"'\\$^!@#%&()+=,;<>|/`")
BAD_NAMES = [
    "",
    "a b",
    "jobs*",
    "jobs?",
    "jobs[0]",
    "{hash}tag",
    "jobs\r\nFLUSHALL",
    "jobs\nDEL x",
    "jobs\x00",
    "kyu:default:~epoch",
    "~epoch",
    '"quoted"',
    "it's",
    "back\\slash",
    "$dollar",
    "ünïcode",
    "tab\tname",
    "x" * 201,
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_queue_names_with_redis_special_characters_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="queue name"):
        Config(queue_name=name)
    with pytest.raises(ConfigError, match="queue name"):
        Config.from_env({"KYU_QUEUE": name} if name else {"KYU_QUEUE": " "})
    with pytest.raises(ConfigError, match="queue name"):
        attrs.evolve(Config(), queue_name=name)


async def test_a_refused_queue_name_never_reaches_redis(throwaway_redis: Any) -> None:
    client = redis.Redis(port=throwaway_redis.port)
    before = client.dbsize()
    for name in BAD_NAMES:
        with pytest.raises(ConfigError):
            Queue(Config(redis_url=throwaway_redis.url, queue_name=name))
    assert client.dbsize() == before
    client.close()


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=210))
def test_every_accepted_queue_name_is_plain(name: str) -> None:
    try:
        Config(queue_name=name)
    except ConfigError:
        accepted = False
    else:
        accepted = True
    plain = 1 <= len(name) <= 200 and re.fullmatch(r"[A-Za-z0-9:_.\-]+", name) is not None
    assert accepted == plain
    if accepted:
        assert not REDIS_SPECIAL & set(name)
        assert name.isascii() and name.isprintable()


# ---- payloads in logs ---------------------------------------------------------------------


@pytest.mark.parametrize("log_payloads", [False, True])
async def test_payloads_are_logged_only_when_asked(
    make_config: Callable[..., Config], log_payloads: bool, debug_logs: pytest.LogCaptureFixture
) -> None:
    queue = Queue(make_config(log_payloads=log_payloads))

    @queue.handler("fails")
    async def fails(payload: str) -> None:
        raise RuntimeError("boom")

    @queue.handler("works")
    async def works(payload: str) -> None:
        pass

    async with queue:
        await queue.enqueue("fails", "card=4111-1111-1111-1111", max_retries=0)
        await queue.enqueue("works", "ssn=078-05-1120")
        await queue.run_once()
    logged = everything_logged(debug_logs)
    assert "boom" in logged
    for secret in ("4111-1111-1111-1111", "078-05-1120"):
        assert (secret in logged) is log_payloads, secret
