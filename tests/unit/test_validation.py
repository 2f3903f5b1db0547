"""Enqueue validation and the operations' argument checks: pure, no servers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from kyu_trio import Config, EnqueueRequest, InvalidJobError, JobNotFound, JobStatus, KyuError
from kyu_trio._config import MAX_SECONDS
from kyu_trio._validation import (
    MAX_DURATION,
    MAX_JOB_TYPE_LENGTH,
    MAX_LIMIT,
    MAX_RETRIES_LIMIT,
    check_age,
    check_final_statuses,
    check_job_type,
    check_job_type_filter,
    check_limit,
    check_status,
    parse_job_id,
    validate_request,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
JOB_ID = "0b5c3f6e-0000-4000-8000-000000000001"
CONFIG = Config(queue_name="q", default_job_timeout=30.0, max_payload_bytes=10)


def validate(item: Any) -> Any:
    return validate_request(item, config=CONFIG, now=NOW, job_id=JOB_ID)


def test_a_pair_becomes_a_pending_job_with_the_config_defaults() -> None:
    new = validate(("resize", "a.png"))
    assert (new.id, new.queue, new.job_type, new.payload) == (JOB_ID, "q", "resize", '"a.png"')
    assert (new.priority, new.max_retries, new.job_timeout) == (0, 3, 30.0)
    assert (new.scheduled_at, new.status) == (NOW, JobStatus.PENDING)


def test_a_future_time_is_scheduled_a_past_one_pending() -> None:
    later = validate(EnqueueRequest("t", "", scheduled_at=NOW + timedelta(seconds=1)))
    assert later.status is JobStatus.SCHEDULED
    earlier = validate(EnqueueRequest("t", "", scheduled_at=NOW - timedelta(days=1)))
    assert (earlier.status, earlier.scheduled_at) == (JobStatus.PENDING, NOW - timedelta(days=1))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("t", "each job is"),
        (("t", "p", "x"), "each job is"),
        (("", "p"), "non-empty str"),
        (("x" * (MAX_JOB_TYPE_LENGTH + 1), "p"), "at most 200"),
        (("a\nb", "p"), "control characters"),
        (("a\u2028b", "p"), "control characters"),
        (("\ud800", "p"), "lone surrogates"),
        (("t", b"bytes"), "payload must be a JSON value"),
        (("t", math.nan), "payload must be a JSON value"),
        (("t", [math.inf]), "payload must be a JSON value"),
        (("t", {"k": object()}), "payload must be a JSON value"),
        (("t", "\udfff"), "lone surrogates"),
        (("t", "x" * 9), "11 bytes of JSON, over Config.max_payload_bytes=10"),
        (EnqueueRequest("t", "", priority=32768), "priority must be an int"),
        (EnqueueRequest("t", "", priority=True), "priority must be an int"),
        (EnqueueRequest("t", "", max_retries=-1), "max_retries"),
        (EnqueueRequest("t", "", max_retries=MAX_RETRIES_LIMIT + 1), "max_retries"),
        (EnqueueRequest("t", "", job_timeout=0), "job_timeout"),
        (EnqueueRequest("t", "", job_timeout=math.nan), "job_timeout"),
        (EnqueueRequest("t", "", job_timeout=MAX_SECONDS + 1), "job_timeout"),
        (EnqueueRequest("t", "", job_timeout=10**400), "job_timeout"),
        (EnqueueRequest("t", "", scheduled_at="tomorrow"), "must be a datetime"),  # type: ignore[arg-type]
        (EnqueueRequest("t", "", scheduled_at=datetime(2030, 1, 1)), "timezone-aware"),
        (EnqueueRequest("t", "", scheduled_at=datetime(1969, 12, 31, tzinfo=UTC)), "out of range"),
    ],
)
def test_bad_requests_say_what_is_wrong(item: Any, message: str) -> None:
    with pytest.raises(InvalidJobError, match=message):
        validate(item)


def test_the_longest_timeout_and_the_time_range_ends_are_accepted() -> None:
    assert validate(EnqueueRequest("t", "", job_timeout=MAX_SECONDS)).job_timeout == MAX_SECONDS
    far = timezone(timedelta(hours=14))
    for edge in (datetime(1970, 1, 1, tzinfo=far), datetime(9999, 1, 1, tzinfo=far)):
        assert validate(EnqueueRequest("t", "", scheduled_at=edge)).scheduled_at == edge


def test_limits_ids_and_filters() -> None:
    assert check_limit(MAX_LIMIT) == MAX_LIMIT
    for bad in (0, MAX_LIMIT + 1, True, 1.0, 2**70):
        with pytest.raises(KyuError, match="limit must be an int"):
            check_limit(bad)
    assert parse_job_id(JOB_ID.upper()) == JOB_ID
    for bad_id in (7, "nope"):
        with pytest.raises(JobNotFound):
            parse_job_id(bad_id)
    assert check_status("dead") is JobStatus.DEAD
    assert check_status(None) is None
    with pytest.raises(KyuError, match="unknown status"):
        check_status("done")
    assert check_job_type_filter("any type at all\n") == "any type at all\n"
    with pytest.raises(KyuError, match="without NUL"):
        check_job_type_filter("a\x00")


def test_purge_arguments() -> None:
    assert check_age(MAX_DURATION) == MAX_DURATION
    for bad_age in (timedelta(seconds=-1), MAX_DURATION + timedelta(days=1), 7):
        with pytest.raises(KyuError, match="older_than"):
            check_age(bad_age)
    assert check_final_statuses("dead") == [JobStatus.DEAD]
    for bad in ([], ["pending"], ["bogus"], [None]):
        with pytest.raises(KyuError, match="only completed, cancelled and dead"):
            check_final_statuses(bad)


def test_job_types_are_checked_on_registration_too() -> None:
    assert check_job_type("send_email") == "send_email"
    with pytest.raises(InvalidJobError):
        check_job_type(None)
