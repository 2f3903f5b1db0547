"""Bad input gets a clear KyuError and writes nothing, in PostgreSQL or in Redis."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis

from kyu_trio import (
    Config,
    ConfigError,
    InvalidJobError,
    KyuConnectionError,
    KyuError,
    NotConnectedError,
    Queue,
)
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def count_rows(dsn: str, queue: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM kyu_jobs WHERE queue = %s", (queue,)).fetchone()
    assert row is not None
    return int(row[0])


BAD_ENQUEUES: list[tuple[str, dict[str, Any]]] = [
    ("empty job type", {"job_type": ""}),
    ("blank job type", {"job_type": "   "}),
    ("non-str job type", {"job_type": 42}),
    ("NUL in job type", {"job_type": "a\x00b"}),
    ("non-str payload", {"payload": b"bytes"}),
    ("set payload", {"payload": {"a", "b"}}),
    ("NaN payload", {"payload": {"x": math.nan}}),
    ("lone surrogate", {"payload": "\ud800"}),
    ("negative max_retries", {"max_retries": -1}),
    ("float max_retries", {"max_retries": 1.5}),
    ("NaN timeout", {"job_timeout": math.nan}),
    ("negative timeout", {"job_timeout": -1.0}),
    ("zero timeout", {"job_timeout": 0}),
    ("inf timeout", {"job_timeout": math.inf}),
    ("naive scheduled_at", {"scheduled_at": datetime(2030, 1, 1)}),
    ("str scheduled_at", {"scheduled_at": "2030-01-01"}),
    ("priority too high", {"priority": 32768}),
    ("priority too low", {"priority": -32769}),
    ("priority beyond 64 bits", {"priority": 2**70}),
    ("bool priority", {"priority": True}),
]


@pytest.mark.parametrize(("case", "override"), BAD_ENQUEUES, ids=[c for c, _ in BAD_ENQUEUES])
async def test_bad_enqueue_is_rejected_and_writes_nothing(
    real_queue: Queue, pg_dsn: str, redis_client: redis.Redis, case: str, override: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"job_type": "t", "payload": "p"}
    args.update(override)
    job_type, payload = args.pop("job_type"), args.pop("payload")
    with pytest.raises(InvalidJobError):
        await real_queue.enqueue(job_type, payload, **args)
    name = real_queue.config.queue_name
    assert count_rows(pg_dsn, name) == 0
    assert redis_client.zcard(name) == 0


async def test_oversized_payload(make_config: Callable[..., Config], pg_dsn: str) -> None:
    queue = Queue(make_config(max_payload_bytes=1000))
    async with queue:
        with pytest.raises(InvalidJobError, match="max_payload_bytes"):
            await queue.enqueue("t", "é" * 500)  # 1002 bytes of JSON in UTF-8, with the quotes
        await queue.enqueue("t", "x" * 998)
    assert count_rows(pg_dsn, queue.config.queue_name) == 1


async def test_one_bad_item_rejects_the_whole_batch(real_queue: Queue, pg_dsn: str) -> None:
    with pytest.raises(InvalidJobError):
        await real_queue.enqueue_many([("t", "ok"), ("t", math.inf), ("t", "ok")])
    assert count_rows(pg_dsn, real_queue.config.queue_name) == 0


async def test_sql_injection_is_just_data(real_queue: Queue, pg_dsn: str) -> None:
    evil = "'); DROP TABLE kyu_jobs; --"
    job_id = await real_queue.enqueue(evil, evil)
    job = await real_queue.inspect(job_id)
    assert (job.job_type, job.payload) == (evil, evil)
    assert count_rows(pg_dsn, real_queue.config.queue_name) == 1


async def test_enqueue_before_connect_is_a_clear_error(make_config: Callable[..., Config]) -> None:
    queue = Queue(make_config())
    with pytest.raises(NotConnectedError, match="not connected"):
        await queue.enqueue("t", "p")
    with pytest.raises(NotConnectedError):
        await queue.inspect("00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize(
    "name", ["", "has space", "semi;colon", "slash/", "tilde~", "ü", "x" * 201, 5]
)
def test_bad_queue_names(name: Any) -> None:
    with pytest.raises(ConfigError, match="queue name"):
        Config(queue_name=name)


async def test_unreachable_postgres_names_host_port_not_password(redis_url: str) -> None:
    port = free_port()
    queue = Queue(Config(dsn=f"postgresql://kyu:s3cret@127.0.0.1:{port}/x", redis_url=redis_url))
    with pytest.raises(KyuConnectionError) as info:
        await queue.connect()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert not queue.connected


async def test_unreachable_redis_names_host_port_not_password(pg_dsn: str) -> None:
    port = free_port()
    queue = Queue(Config(dsn=pg_dsn, redis_url=f"redis://:s3cret@127.0.0.1:{port}/0"))
    with pytest.raises(KyuConnectionError) as info:
        await queue.connect()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert not queue.connected


@pytest.mark.parametrize(
    "dsn", ["postgresql://u:pw@host:notaport/db", "host=localhost port=5432 bogus_option=1 ="]
)
def test_malformed_dsn(dsn: str) -> None:
    with pytest.raises(ConfigError, match="malformed PostgreSQL DSN") as info:
        Config(dsn=dsn)
    assert "pw" not in str(info.value).replace("password", "")


def test_malformed_redis_url() -> None:
    with pytest.raises(ConfigError):
        Config(redis_url="http://localhost:6379")
    with pytest.raises(ConfigError):
        Config(redis_url="redis://localhost:6379/notanumber")


def test_repr_masks_passwords() -> None:
    config = Config(
        dsn="postgresql://app:hunter2@db:5432/app", redis_url="redis://:hunter3@cache:6379/1"
    )
    assert "hunter2" not in repr(config)
    assert "hunter3" not in repr(config)
    assert "app:***@db" in repr(config)


async def test_bad_dead_jobs_limit(real_queue: Queue) -> None:
    with pytest.raises(KyuError):
        await real_queue.dead_jobs(limit=0)


async def test_scheduled_at_in_other_timezone_is_respected(real_queue: Queue) -> None:
    from datetime import timezone

    tz = timezone(timedelta(hours=5))
    when = datetime.now(tz) + timedelta(hours=1)
    job_id = await real_queue.enqueue("t", "", scheduled_at=when)
    assert (await real_queue.inspect(job_id)).scheduled_at == when


async def test_missing_database_is_refused_not_unreachable(pg_dsn: str, redis_url: str) -> None:
    import psycopg

    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    params["dbname"] = "kyu_no_such_database"
    queue = Queue(Config(dsn=psycopg.conninfo.make_conninfo(**params), redis_url=redis_url))
    with pytest.raises(KyuConnectionError, match=r"refused the connection.*does not exist"):
        await queue.connect()


def test_config_can_change_only_while_disconnected() -> None:
    import attrs

    queue = Queue(Config(queue_name="before"))
    queue.config = attrs.evolve(queue.config, queue_name="after")
    assert (
        queue.metrics.registry.get_sample_value("kyu_info", {"version": "0.1.0", "queue": "after"})
        == 1
    )


# ---- control characters in job types --------------------------------------------------

CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))] + ["\u2028", "\u2029"]


async def test_job_types_with_control_characters_are_refused(
    real_queue: Queue, pg_dsn: str, redis_client: redis.Redis
) -> None:
    """A job type goes into log lines and metric labels: CR, LF, ESC, NEL, U+2028 and
    the rest could forge a line or a terminal command."""
    for char in CONTROLS:
        for job_type in (f"send{char}email", f"{char}x", f"x{char}"):
            with pytest.raises(InvalidJobError, match="control characters") as info:
                await real_queue.enqueue(job_type, "p")
            assert char not in str(info.value)  # quoted with escapes
            with pytest.raises(InvalidJobError):
                await real_queue.enqueue_many([("ok", "p"), (job_type, "p")])
            with pytest.raises(InvalidJobError):
                real_queue.register(job_type, _noop)
    name = real_queue.config.queue_name
    assert count_rows(pg_dsn, name) == 0
    assert redis_client.zcard(name) == 0
    # Printable text of any script, spaces included, is still a job type.
    for job_type in ("send_email", "envoyer un e-mail", "メール送信", "a.b:c/d", "emoji 🎉"):
        real_queue.register(job_type, _noop)
        assert (await real_queue.inspect(await real_queue.enqueue(job_type, ""))).job_type == (
            job_type
        )


async def _noop(payload: str) -> None:
    pass


# ---- limits, ages and statuses of the API ------------------------------------------------

HUGE_INT = 10**5000  # its repr() raises ValueError: no message may try to print it


@pytest.mark.parametrize(
    "limit",
    [0, -1, 1_000_001, 2**63, 10**20, pytest.param(HUGE_INT, id="10**5000"), 1.0, True, "5", None],
)
async def test_limits_are_checked_before_postgresql_sees_them(
    real_queue: Queue, limit: Any
) -> None:
    # 10**20 reached PostgreSQL as a raw NumericValueOutOfRange.
    for call in (
        lambda: real_queue.list_jobs(limit=limit),
        lambda: real_queue.dead_jobs(limit),
        lambda: real_queue.retry_dead_jobs(limit),
    ):
        with pytest.raises(KyuError, match="limit must be an int from 1 to 1000000"):
            await call()


async def test_the_largest_limit_works(real_queue: Queue) -> None:
    await real_queue.enqueue("t", "p")
    assert len(await real_queue.list_jobs(limit=1_000_000)) == 1
    assert await real_queue.dead_jobs(1_000_000) == []
    assert await real_queue.retry_dead_jobs(1_000_000) == 0


@pytest.mark.parametrize(
    "older_than",
    [timedelta.max, timedelta(days=36526), timedelta(seconds=-1), 3600, None],
)
async def test_purge_ages_are_bounded(real_queue: Queue, older_than: Any) -> None:
    # timedelta.max made `now - older_than` raise OverflowError.
    with pytest.raises(KyuError, match="older_than"):
        await real_queue.purge(older_than)


async def test_purge_statuses_are_checked(real_queue: Queue) -> None:
    for statuses in (["bogus"], [None], ["running"], [], [["dead"]]):
        with pytest.raises(KyuError, match="only completed, cancelled and dead"):
            await real_queue.purge(timedelta(0), statuses)
    # One status on its own, as a str, is one status (not its letters).
    assert await real_queue.purge(timedelta(days=36525), "dead") == 0


async def test_list_jobs_type_filter_is_checked(real_queue: Queue) -> None:
    for job_type in ("a\x00b", "\ud800", 5):
        with pytest.raises(KyuError, match="job_type"):
            await real_queue.list_jobs(job_type=job_type)  # type: ignore[arg-type]
    with pytest.raises(KyuError, match="unknown status"):
        await real_queue.list_jobs(status="x" * 10_000)


@pytest.mark.parametrize("field", ["priority", "max_retries", "job_timeout"])
async def test_huge_ints_in_enqueue_are_invalid_job_errors(real_queue: Queue, field: str) -> None:
    with pytest.raises(InvalidJobError, match=field) as info:
        await real_queue.enqueue("t", "p", **{field: HUGE_INT})
    assert "bits" in str(info.value)


# ---- the largest accepted settings, on the real servers -------------------------------------


async def test_a_late_retry_and_a_reaper_pass_at_the_largest_settings(
    make_config: Callable[..., Config], pg_dsn: str
) -> None:
    """max_backoff=1e12 crashed a worker on a late retry (``now + backoff`` past the year
    9999) and stale_job_timeout=1e11 every reaper pass (``now - timeout`` before year 1):
    Config now refuses both, and its largest values work end to end."""
    from kyu_trio._config import MAX_SECONDS

    with pytest.raises(ConfigError, match="max_backoff"):
        make_config(max_backoff=1e12)
    with pytest.raises(ConfigError, match="stale_job_timeout"):
        make_config(stale_job_timeout=1e11)
    queue = Queue(
        make_config(
            max_backoff=MAX_SECONDS,
            stale_job_timeout=MAX_SECONDS,
            retry_jitter=10,
            reaper_interval=MAX_SECONDS,
        )
    )

    @queue.handler("fails")
    async def fails(payload: str) -> None:
        raise RuntimeError("again")

    async with queue:
        job_id = await queue.enqueue("fails", "", max_retries=2**31 - 1)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a job on its 2000th retry
            conn.execute("UPDATE kyu_jobs SET retry_count = 2000 WHERE id = %s", (job_id,))
        await queue.run_once()  # the reaper pass, then the run that fails
        job = await queue.inspect(job_id)
    assert (job.status.value, job.retry_count) == ("failed", 2001)
    wait = job.scheduled_at - datetime.now(job.scheduled_at.tzinfo)
    assert timedelta(seconds=MAX_SECONDS - 60) < wait <= timedelta(seconds=11 * MAX_SECONDS)
