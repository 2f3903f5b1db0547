"""Configuration is checked up front: every duration, count and name in `Config` is
bounded, so that no setting can make date arithmetic overflow at run time (the reaper's
``now - stale_job_timeout``, a retry's ``now + backoff``), and a bad value is one clear
`ConfigError`, never a ValueError or OverflowError from deep inside."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from kyu_trio import Config, ConfigError
from kyu_trio._config import MAX_POOL_SIZE, MAX_SECONDS, MAX_WORKERS
from kyu_trio._retry import RetryPolicy

DURATIONS = [
    field.name
    for field in attrs.fields(Config)
    if field.type in ("float", float) and field.name != "retry_jitter"
]
HUGE_INT = 10**5000  # its repr() raises ValueError: the message must not try to print it
HUGE = pytest.param(HUGE_INT, id="10**5000")


def test_every_duration_is_listed() -> None:
    assert set(DURATIONS) == {
        "metrics_sample_interval",
        "stale_job_timeout",
        "heartbeat_interval",
        "scheduler_interval",
        "reaper_interval",
        "leader_interval",
        "default_job_timeout",
        "max_backoff",
        "shutdown_grace",
    }


@pytest.mark.parametrize("field", DURATIONS)
@pytest.mark.parametrize("value", [1e11, 1e12, MAX_SECONDS + 1, math.inf, math.nan, HUGE, -1])
def test_durations_are_bounded(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        Config(**{field: value})
    assert "366 days" in str(info.value) or value == -1
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("field", [f for f in DURATIONS if f != "heartbeat_interval"])
def test_the_longest_duration_is_accepted(field: str) -> None:
    assert getattr(Config(**{field: MAX_SECONDS}), field) == MAX_SECONDS


def test_date_arithmetic_at_the_bounds_cannot_overflow() -> None:
    """What the reaper and the retry path compute from the largest accepted settings."""
    config = Config(stale_job_timeout=MAX_SECONDS, max_backoff=MAX_SECONDS, retry_jitter=10)
    for now in (datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)):
        assert now - timedelta(seconds=config.stale_job_timeout) < now
        policy = RetryPolicy(config.max_backoff, config.retry_jitter, rng=random.Random(0))
        for retry_count in (0, 30, 1023, 10**9, 2**31 - 1, -5):
            due = policy.next_due(retry_count, now)
            assert now < due <= now + timedelta(seconds=11 * MAX_SECONDS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_backoff": 1e12},
        {"max_backoff": math.inf},
        {"max_backoff": 0},
        {"jitter": math.nan},
        {"jitter": 11},
        {"jitter": True},
    ],
)
def test_retry_policy_refuses_what_config_refuses(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("workers", MAX_WORKERS + 1, MAX_WORKERS),
        ("pool_size", MAX_POOL_SIZE + 1, MAX_POOL_SIZE),
        ("max_payload_bytes", 1024**3, 1024**3 - 1),
        pytest.param("workers", HUGE_INT, 1, id="workers-10**5000"),
        ("workers", 0, 1),
    ],
)
def test_counts_are_bounded(field: str, bad: int, good: int) -> None:
    with pytest.raises(ConfigError, match=field):
        Config(**{field: bad})
    assert getattr(Config(**{field: good}), field) == good


@pytest.mark.parametrize("value", ["", "local host", "host\n", "\x1b[31m", 5, None])
def test_metrics_host_is_checked(value: object) -> None:
    with pytest.raises(ConfigError, match="metrics_host"):
        Config(metrics_host=value)  # type: ignore[arg-type]


def test_huge_environment_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="KYU_WORKERS"):
        Config.from_env({"KYU_WORKERS": "9" * 5000})  # int() refuses over 4300 digits
    with pytest.raises(ConfigError, match="workers"):
        Config.from_env({"KYU_WORKERS": "9" * 30})
    with pytest.raises(ConfigError, match="metrics_port"):
        Config.from_env({"KYU_METRICS_PORT": "9" * 30})


# ---- control characters in queue names -----------------------------------------------------

CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))] + ["\u2028", "\u2029"]


def test_the_control_characters_are_all_there() -> None:
    assert len(CONTROLS) == 32 + 1 + 32 + 2
    assert "\x00" in CONTROLS and "\n" in CONTROLS and "\x85" in CONTROLS


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_queue_names_refuse_every_control_character(where: str) -> None:
    for char in CONTROLS:
        name = {"start": char + "jobs", "middle": "jo" + char + "bs", "end": "jobs" + char}[where]
        with pytest.raises(ConfigError, match="invalid queue name") as info:
            Config(queue_name=name)
        # The message escapes what it quotes: it cannot forge a line either.
        assert char not in str(info.value)
        with pytest.raises(ConfigError):
            Config.from_env({"KYU_QUEUE": name})
