"""The list's query builder, without servers: cursors, id prefixes, which index answers
which filter, and what stays residual."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kyu_trio import JobStatus
from kyu_trio.dashboard._query import BY_ID, PLANS, Cursor, JobFilter, id_range, list_query

JOB_ID = "01a21566-1748-7265-9d52-ec518675d7e1"


@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_time_cursors_round_trip(when: datetime, ident: uuid.UUID) -> None:
    cursor = Cursor(when, str(ident))
    assert Cursor.decode(cursor.encode(), PLANS[JobStatus.DEAD]) == cursor


@given(st.integers(min_value=1, max_value=2**63 - 1), st.uuids())
def test_seq_cursors_round_trip(seq: int, ident: uuid.UUID) -> None:
    cursor = Cursor(seq, str(ident))
    assert Cursor.decode(cursor.encode(), PLANS[JobStatus.PENDING]) == cursor


def test_cursors_of_another_list_or_garbage_are_refused() -> None:
    when = Cursor(datetime(2026, 1, 1, tzinfo=UTC), JOB_ID).encode()
    assert Cursor.decode(when, PLANS[JobStatus.PENDING]) is None  # a time where seq is due
    assert Cursor.decode(Cursor(5, JOB_ID).encode(), PLANS[None]) is None
    assert Cursor.decode(Cursor(JOB_ID, JOB_ID).encode(), BY_ID) == Cursor(JOB_ID, JOB_ID)
    for text in ("", "!!", "dA", "x" * 500, "dDEyMy5ub3QtYS11dWlk"):
        assert Cursor.decode(text, PLANS[None]) is None


def test_id_prefixes_are_ranges_of_the_primary_key() -> None:
    assert id_range("01a2") == (
        "01a20000-0000-0000-0000-000000000000",
        "01a2ffff-ffff-ffff-ffff-ffffffffffff",
    )
    assert id_range(JOB_ID) == (JOB_ID, JOB_ID)
    assert id_range("01A21566-17") == (
        "01a21566-1700-0000-0000-000000000000",
        "01a21566-17ff-ffff-ffff-ffffffffffff",
    )
    for bad in ("", "xyz", "01a2'; --", "0" * 33):
        assert id_range(bad) is None


@pytest.mark.parametrize("status", list(PLANS), ids=lambda s: s.value if s else "any")
def test_each_status_reads_its_own_index_with_nothing_residual(status: JobStatus | None) -> None:
    flt = JobFilter(("q",), status)
    expected = [f"status = '{status.value}'"] if status is JobStatus.SCHEDULED else []
    assert flt.residuals() == expected
    query = list_query(flt, cursor=None, limit=51, scan_limit=1000)
    assert PLANS[status].predicate in query.sql
    assert "OFFSET" not in query.sql


def test_what_no_index_answers_is_residual() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    by_type = JobFilter(("q",), JobStatus.DEAD, job_type="send_email", since=since)
    assert by_type.residuals() == ["job_type = %(job_type)s"]  # died since: the index
    pending = JobFilter(("q",), JobStatus.PENDING, since=since)
    assert pending.residuals() == ["created_at >= %(since)s"]  # queue order, not time
    low, high = id_range("01a2")  # type: ignore[misc]
    by_id = JobFilter(("q", "r"), JobStatus.DEAD, id_prefix="01a2", id_low=low, id_high=high)
    assert by_id.plan is BY_ID
    assert by_id.residuals() == ["queue = ANY(%(queues)s::text[])", "status = 'dead'"]
    query = list_query(by_id, cursor=None, limit=51, scan_limit=1000)
    assert query.params["id_low"] == low and query.params["id_high"] == high
