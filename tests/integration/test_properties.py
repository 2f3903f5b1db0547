"""Property-based bad input against a real Queue: `enqueue`, `enqueue_many`, `inspect` and
`cancel_job` with arbitrary job types, payloads, priorities, retries, timeouts, datetimes
and ids. Each call either succeeds or raises a `KyuError` subclass (never a raw driver
exception), and a rejected call writes nothing: the queue's row count in PostgreSQL and
its Redis zcard are unchanged.

Hypothesis drives a plain function in a worker thread; each example calls into the
test's trio loop with `trio.from_thread.run`, so every example uses the one connected
queue (and its pools) of the test.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
import redis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kyu_trio import (
    Config,
    EnqueueRequest,
    InvalidJobError,
    JobNotFound,
    JobStatus,
    KyuError,
    Queue,
)

pytestmark = pytest.mark.integration

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SMALL_LIMIT = 10_000

# ---- strategies -----------------------------------------------------------------------

SQLISH = [
    "'); DROP TABLE kyu_jobs; --",
    "' OR '1'='1",
    "%s %(now)s {} %%",
    "\\x00",
    '"; FLUSHALL; "',
    "*\r\nFLUSHALL\r\n",
    "$$; SELECT pg_sleep(10); $$",
    "kyu:default:~epoch",
]

SPECIAL = ["\x00", "'", '"', ";", "\\", "%", "{", "}", "\r", "\n", "é", "😀", "\ufeff"]
# Drawn one by one and joined: as a text() alphabet, the 2,048 surrogates would be
# drowned by the other 1.1 million code points.
characters = st.integers(0, 15).flatmap(
    lambda i: st.characters(categories=["Cs"]) if i == 0  # a lone surrogate
    else st.sampled_from(SPECIAL) if i == 1
    else st.characters()
)  # fmt: skip
texts = st.one_of(
    st.lists(characters, max_size=40).map("".join),
    st.sampled_from(SQLISH),
)


def repeated(limit: int) -> st.SearchStrategy[str]:
    """Long strings near ``limit`` bytes (1- to 4-byte characters), cheaply."""
    return st.builds(
        lambda ch, n: ch * n, st.sampled_from(["x", "é", "€", "😀"]), st.integers(0, limit + 10)
    ).flatmap(lambda s: st.sampled_from([s, s + "y", s[:-1]]))


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
    """Valid about four times in five, so that whole calls often get through validation
    (``st.one_of(valid, valid, valid, invalid)`` would not do: it flattens and dedups)."""
    return st.integers(0, 4).flatmap(lambda i: valid if i else invalid)


job_types = mostly(
    st.one_of(texts.filter(lambda t: t.strip() != ""), st.text(st.characters(), max_size=200)),
    st.one_of(
        st.text(st.characters(), min_size=199, max_size=205),
        st.sampled_from(["", " ", "\t", "a\x00b"]),
        st.integers(),
        st.none(),
        st.binary(max_size=5),
    ),
)
payloads = mostly(
    st.one_of(texts, repeated(SMALL_LIMIT)),
    st.one_of(
        st.none(),
        st.binary(max_size=5),
        st.integers(),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
)
priorities = mostly(
    st.one_of(st.integers(-32768, 32767), st.sampled_from([-32768, 32767])),
    st.one_of(
        st.integers(min_value=-(2**80), max_value=2**80),
        st.sampled_from([-32769, 32768, 2**63, -(2**63) - 1, 2**64, 10**400]),
        st.booleans(),
        st.floats(),
        st.none(),
        st.text(max_size=3),
    ),
)
retries = mostly(
    st.one_of(st.integers(0, 10), st.just(2**31 - 1)),
    st.one_of(
        st.integers(-(2**70), -1),
        st.sampled_from([2**31, 2**63, 10**400]),
        st.floats(),
        st.booleans(),
        st.none(),
    ),
)
timeouts = mostly(
    st.one_of(st.none(), st.floats(min_value=1e-9, max_value=1e6), st.integers(1, 10**6)),
    st.one_of(
        st.floats(),
        st.integers(-5, 0),
        st.sampled_from([math.inf, -math.inf, math.nan, 0, 0.0, 1e308, 2**70, 10**400]),
        st.booleans(),
        st.text(max_size=3),
    ),
)
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
aware = st.datetimes(timezones=st.one_of(offsets, st.timezones()))  # years 1..9999
moments = mostly(
    st.one_of(
        st.none(),
        aware.filter(lambda d: 1971 <= d.year <= 9998),
        st.timedeltas(timedelta(days=-3), timedelta(days=3)).map(lambda t: datetime.now(UTC) + t),
    ),
    st.one_of(
        st.datetimes(),  # naive
        aware,
        st.sampled_from([
            datetime.min, datetime.max, datetime.min.replace(tzinfo=UTC),
            datetime.max.replace(tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
            datetime(9999, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        ]),
        st.dates(),
        st.text(max_size=10),
        st.floats(),
    ),
)  # fmt: skip
ids = st.one_of(
    texts,
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: f"urn:uuid:{u}"),
    st.uuids().map(lambda u: str(u) + "\x00"),
    st.uuids(),
    st.integers(),
    st.none(),
    st.binary(max_size=16),
    st.text(min_size=1000, max_size=2000),
)


# ---- the harness ------------------------------------------------------------------------


class Observer:
    """Counts the queue's rows and its Redis set from the example's thread."""

    def __init__(self, dsn: str, redis_url: str, queue: str) -> None:
        self.queue = queue
        self.pg = psycopg.connect(dsn, autocommit=True)
        self.redis = redis.Redis.from_url(redis_url)

    def state(self) -> tuple[int, int]:
        row = self.pg.execute(
            "SELECT count(*) FROM kyu_jobs WHERE queue = %s", (self.queue,)
        ).fetchone()
        assert row is not None
        return int(row[0]), int(self.redis.zcard(self.queue))

    def close(self) -> None:
        self.pg.close()
        self.redis.close()


@pytest.fixture
def small_config(make_config: Callable[..., Config]) -> Config:
    return make_config(max_payload_bytes=SMALL_LIMIT)


@pytest.fixture
def observer(small_config: Config) -> Iterator[Observer]:
    obs = Observer(small_config.dsn, small_config.redis_url, small_config.queue_name)
    yield obs
    obs.close()


def call(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Run ``fn`` in the test's trio loop: (result, None) or (None, the KyuError). Any
    other exception fails the example."""

    async def go() -> Any:
        return await fn(*args, **kwargs)

    try:
        return trio.from_thread.run(go), None
    except KyuError as exc:
        return None, exc
    except Exception as exc:  # a raw driver error, TypeError, ... is a bug
        raise AssertionError(
            f"{type(exc).__module__}.{type(exc).__name__} (not a KyuError) from "
            f"{getattr(fn, '__name__', fn)}: {exc!r}"[:2000]
        ) from exc


async def run_examples(test: Callable[[], None]) -> None:
    await trio.to_thread.run_sync(test)


def is_due(scheduled_at: object) -> bool:
    return scheduled_at is None or (
        isinstance(scheduled_at, datetime) and scheduled_at <= datetime.now(UTC)
    )


# ---- properties -------------------------------------------------------------------------


async def test_enqueue_accepts_or_rejects_cleanly(small_config: Config, observer: Observer) -> None:
    queue = Queue(small_config)

    @SETTINGS
    @given(
        job_type=job_types, payload=payloads, priority=priorities, max_retries=retries,
        scheduled_at=moments, job_timeout=timeouts,
    )  # fmt: skip
    def example(
        job_type: Any, payload: Any, priority: Any, max_retries: Any, scheduled_at: Any,
        job_timeout: Any,
    ) -> None:  # fmt: skip
        before = observer.state()
        job_id, error = call(
            queue.enqueue, job_type, payload, priority=priority, max_retries=max_retries,
            scheduled_at=scheduled_at, job_timeout=job_timeout,
        )  # fmt: skip
        after = observer.state()
        if error is not None:
            assert isinstance(error, InvalidJobError), repr(error)
            assert after == before, f"rejected ({error}) but wrote {before} -> {after}"
            return
        rows, zcard = after
        assert rows == before[0] + 1
        job, error = call(queue.inspect, job_id)
        assert error is None, error
        assert (job.job_type, job.payload, job.priority) == (job_type, payload, priority)
        assert job.max_retries == max_retries
        # Payloads are JSON values now: the limit applies to their compact encoding.
        encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        assert len(encoded.encode()) <= SMALL_LIMIT
        if job.status is JobStatus.PENDING:
            assert zcard == before[1] + 1
        else:
            assert job.status is JobStatus.SCHEDULED
            assert not is_due(scheduled_at)
            assert zcard == before[1]

    async with queue:
        await run_examples(example)


async def test_enqueue_many_is_all_or_nothing(small_config: Config, observer: Observer) -> None:
    queue = Queue(small_config)
    good = st.builds(EnqueueRequest, st.just("t"), st.text(st.characters(), max_size=20))
    bad = st.one_of(
        st.builds(EnqueueRequest, job_types, payloads, priority=priorities),
        st.tuples(job_types, payloads),
        st.tuples(st.just("t")),
        st.just("not a request"),
        st.none(),
    )

    @SETTINGS
    @given(st.lists(st.one_of(good, good, bad), max_size=8))
    def example(items: list[Any]) -> None:
        before = observer.state()
        result, error = call(queue.enqueue_many, items)
        after = observer.state()
        if error is not None:
            assert after == before, f"rejected ({error}) but wrote {before} -> {after}"
            return
        assert len(result) == len(items) == len(set(result))
        assert after == (before[0] + len(items), before[1] + len(items))

    async with queue:
        await run_examples(example)


async def test_inspect_and_cancel_with_arbitrary_ids(
    small_config: Config, observer: Observer
) -> None:
    queue = Queue(small_config)

    async with queue:
        existing = await queue.enqueue_many([("t", str(i)) for i in range(20)])

        @SETTINGS
        @given(job_id=st.one_of(ids, st.sampled_from(existing)), action=st.sampled_from(["i", "c"]))
        def example(job_id: Any, action: str) -> None:
            before = observer.state()
            fn = queue.inspect if action == "i" else queue.cancel_job
            result, error = call(fn, job_id)
            after = observer.state()
            mine = isinstance(job_id, str) and job_id in existing
            if error is not None:
                assert isinstance(error, JobNotFound), repr(error)
                assert not mine
                assert after == before
                return
            if action == "i":
                assert after == before
                assert result.id == str(uuid.UUID(str(job_id)))
            elif result:  # cancelled: its id leaves Redis, the row stays
                assert after == (before[0], before[1] - 1)
            else:
                assert after == before

        await run_examples(example)
        # The ids of existing jobs still work after all that.
        assert [(await queue.inspect(i)).id for i in existing] == existing


# ---- explicit cases ---------------------------------------------------------------------


async def test_ten_megabytes_against_the_default_limit(
    real_queue: Queue, pg_dsn: str, redis_client: redis.Redis
) -> None:
    limit = real_queue.config.max_payload_bytes
    assert limit == 10 * 1024 * 1024
    name = real_queue.config.queue_name
    # The limit counts the JSON encoding: a str's two quotes are part of it.
    job_id = await real_queue.enqueue("big", "x" * (limit - 2))
    assert len((await real_queue.inspect(job_id)).payload) == limit - 2
    for too_big in ("x" * (limit - 1), "é" * (limit // 2), "😀" * (limit // 4)):
        with pytest.raises(InvalidJobError, match="max_payload_bytes"):
            await real_queue.enqueue("big", too_big)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM kyu_jobs WHERE queue = %s", (name,)).fetchone()
    assert row == (1,)
    assert redis_client.zcard(name) == 1


async def test_job_type_with_a_lone_surrogate_is_a_clear_error(
    real_queue: Queue, redis_client: redis.Redis
) -> None:
    with pytest.raises(InvalidJobError):
        await real_queue.enqueue("a\ud800", "p")
    assert redis_client.zcard(real_queue.config.queue_name) == 0


async def test_job_timeout_too_big_for_a_float_is_a_clear_error(real_queue: Queue) -> None:
    with pytest.raises(InvalidJobError):
        await real_queue.enqueue("t", "p", job_timeout=10**400)


async def test_huge_job_timeout_does_not_break_the_reaper(
    make_config: Callable[..., Config], pg_dsn: str
) -> None:
    queue = Queue(make_config(stale_job_timeout=1.0, heartbeat_interval=0.2))
    async with queue:
        try:
            job_id = await queue.enqueue("t", "p", job_timeout=1e308, max_retries=0)
        except InvalidJobError:
            return  # rejecting it up front is a fix too
        # Its worker died an hour ago, mid-run.
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE kyu_jobs SET status = 'running', locked_by = 'gone', attempt = 1, "
                "locked_at = now() - interval '1 hour', heartbeat_at = now() - interval '1 hour' "
                "WHERE id = %s",
                (job_id,),
            )
        await queue.run_once()  # one scheduler pass and one reaper pass: must not raise
        await queue.inspect(job_id)
