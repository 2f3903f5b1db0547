"""Pure checks of what callers hand to a `Queue` (and what the CLI accepts), and the bounds
they enforce: each bound lives here once.

Nothing here does I/O, so every rule is tested without servers (tests/unit).

Example::

    new_job = validate_request(("send_email", {"to": 1}), config=Config(), now=now, job_id=jid)
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from ._config import MAX_SECONDS, Config, shown
from ._errors import InvalidJobError, JobNotFound, KyuError, ProgressError
from ._job import FINAL_STATES, EnqueueRequest, JobStatus
from ._ports import NewJob
from ._score import PRIORITY_MAX, PRIORITY_MIN
from ._tracing import enqueue_context

#: Longest job type, in characters.
MAX_JOB_TYPE_LENGTH = 200
#: A `unique_key` longer than this is refused: keys are compared in a B-tree index,
#: whose entries must stay well under a page.
MAX_UNIQUE_KEY_LENGTH = 200
#: Largest ``max_retries``: PostgreSQL's integer.
MAX_RETRIES_LIMIT = 2**31 - 1
#: Longest age or delay an operation takes (`Queue.purge`'s ``older_than``, the CLI's
#: durations): the times computed from it stay valid datetimes, with years to spare.
MAX_DURATION = timedelta(days=36525)
#: The range of times ``scheduled_at`` may take.
EARLIEST_AT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_AT = datetime(9999, 1, 1, tzinfo=UTC)
#: Largest ``limit`` of a listing: past 2**63 PostgreSQL answers NumericValueOutOfRange,
#: and long before that a list would not fit in memory.
MAX_LIMIT = 1_000_000


#: Most job ids one bulk call (`Queue.retry_jobs`, ``cancel_jobs``, ``delete_jobs``)
#: takes: each is one statement, whose row locks last as long as it does.
MAX_BULK_IDS = 10_000


def check_job_ids(job_ids: object) -> list[str]:
    """The distinct job ids of a bulk call, canonical and sorted (so that concurrent bulk
    statements lock their rows in one order); `KyuError` for more than `MAX_BULK_IDS` or
    for anything but a collection of str. A str that is not a UUID names no job: it is
    dropped, as an unknown id is ignored by the call.

    Example::

        ids = check_job_ids([job.id for job in await queue.dead_jobs()])
    """
    if isinstance(job_ids, str | bytes) or not isinstance(job_ids, Iterable):
        raise KyuError(
            f"job_ids must be a list (or other collection) of job ids, got {shown(job_ids, 80)}"
        )
    given = list(job_ids)
    if len(given) > MAX_BULK_IDS:
        raise KyuError(
            f"at most {MAX_BULK_IDS} job ids per call, got {len(given)}: split them into batches"
        )
    found: set[str] = set()
    for job_id in given:
        if not isinstance(job_id, str):
            raise KyuError(f"job ids are UUID strings, got {type(job_id).__name__}")
        try:
            found.add(str(uuid.UUID(job_id)))
        except ValueError:
            continue
    return sorted(found)


def check_limit(limit: object, at_most: int = MAX_LIMIT) -> int:
    """``limit`` if it is an int from 1 to ``at_most``, else `KyuError`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= at_most:
        raise KyuError(f"limit must be an int from 1 to {at_most}, got {shown(limit)}")
    return limit


def parse_job_id(job_id: object) -> str:
    """The canonical form of a job id (a UUID string); `JobNotFound` for anything else."""
    if not isinstance(job_id, str):
        raise JobNotFound(f"job ids are UUID strings, got {type(job_id).__name__}")
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise JobNotFound(f"no job {job_id[:100]!r}: not a job id (a UUID)") from None


def check_job_type(job_type: object) -> str:
    """A job type: a non-empty str of at most 200 characters, without control characters."""
    if not isinstance(job_type, str) or not job_type.strip():
        raise InvalidJobError(f"job_type must be a non-empty str, got {shown(job_type, 80)}")
    if len(job_type) > MAX_JOB_TYPE_LENGTH:
        raise InvalidJobError(f"job_type must be at most {MAX_JOB_TYPE_LENGTH} characters")
    # Job types go into log lines, metric labels and terminals: a control character
    # (C0 with NUL, CR and LF, DEL, C1 with NEL) or a line/paragraph separator could
    # forge a log line or a terminal command.
    bad = next(
        (c for c in job_type if c in "\u2028\u2029" or not (" " <= c < "\x7f" or c > "\x9f")), None
    )
    if bad is not None:
        raise InvalidJobError(
            f"job_type must not contain control characters, got {job_type!r:.80} (with {bad!r})"
        )
    if not job_type.isascii() and not _encodable(job_type):
        raise InvalidJobError("job_type is not valid Unicode (lone surrogates)")
    return job_type


def check_unique_key(key: object) -> str | None:
    """None, or a non-empty str of at most 200 characters without control characters.

    Example::

        assert check_unique_key("invoice:42") == "invoice:42"
    """
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise InvalidJobError(f"unique_key must be None or a non-empty str, got {shown(key, 80)}")
    if len(key) > MAX_UNIQUE_KEY_LENGTH:
        raise InvalidJobError(f"unique_key must be at most {MAX_UNIQUE_KEY_LENGTH} characters")
    # Keys show up in logs and terminals (and PostgreSQL refuses NUL): as for job types.
    bad = next(
        (c for c in key if c in "\u2028\u2029" or not (" " <= c < "\x7f" or c > "\x9f")), None
    )
    if bad is not None:
        raise InvalidJobError(
            f"unique_key must not contain control characters, got {key!r:.80} (with {bad!r})"
        )
    if not key.isascii() and not _encodable(key):
        raise InvalidJobError("unique_key is not valid Unicode (lone surrogates)")
    return key


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: One encoder for payloads and results: compact, strict JSON (NaN and infinities are not
#: JSON, and another language's client could not read them), non-ASCII kept as UTF-8.
#: Built once: ``json.dumps`` with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)
#: A ``\u0000`` escape that is not itself an escaped backslash: jsonb refuses it.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _encode(value: object, what: str) -> tuple[str, int]:
    """``value`` as JSON text and its size in UTF-8; ValueError saying what is wrong."""
    try:
        text = _ENCODER.encode(value)
    except Exception as exc:
        # TypeError: not serialisable; ValueError: NaN, infinity, a circular reference or
        # an int too long to print; RecursionError: nesting deeper than Python's stack;
        # anything else: a dict or list subclass whose own methods raise.
        if isinstance(exc, RecursionError):
            reason = "nested too deeply"
        elif isinstance(exc, TypeError | ValueError):
            reason = str(exc)
        else:
            reason = f"encoding it raised {type(exc).__name__}"
        raise ValueError(
            f"{what} must be a JSON value (dict, list, str, int, float, bool or None; no "
            f"NaN or infinity): {reason[:200]}"
        ) from None
    if text.isascii():
        return text, len(text)
    try:
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogates)") from None


def encode_payload(payload: object, max_bytes: int) -> str:
    """The payload as the JSON text stored in ``kyu_jobs.payload``; `InvalidJobError` for
    a value that is not JSON, or whose encoding is over ``max_bytes`` of UTF-8.

    Example::

        assert encode_payload({"to": "a@b.c"}, 1000) == '{"to":"a@b.c"}'
    """
    if type(payload) is str and payload.isascii() and len(payload) < 1000:
        # The common case, short text: no need to look further than the encoder does.
        text = _ENCODER.encode(payload)
        size = len(text)
    else:
        try:
            text, size = _encode(payload, "payload")
        except ValueError as exc:
            raise InvalidJobError(str(exc)) from None
    if size > max_bytes:
        raise InvalidJobError(
            f"payload is {size} bytes of JSON, over Config.max_payload_bytes={max_bytes}"
        )
    return text


def decode_payload(text: str) -> Any:
    """The value a handler receives for a stored payload.

    A row that does not hold JSON (written by SQL outside kyu-trio, or by a kyu-trio
    older than schema version 3 during an upgrade) hands its text over as it is, as
    kyu-trio did before payloads were JSON, rather than failing the job."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def encode_result(value: object, max_bytes: int) -> str:
    """A handler's return value as JSON text for ``kyu_jobs.result``; ValueError (with
    the message the job is recorded with) when it cannot be stored."""
    text, size = _encode(value, "a handler's result")
    if size > max_bytes:
        raise ValueError(
            f"a handler's result is {size} bytes of JSON, over "
            f"Config.max_result_bytes={max_bytes}: return less (e.g. where the data is)"
        )
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise ValueError(
            "a handler's result must not contain NUL characters (PostgreSQL's jsonb refuses them)"
        )
    return text


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobError(f"{name} must be an int from {low} to {high}, got {shown(value)}")
    return value


def check_job_timeout(timeout: object) -> float:
    """Seconds > 0 and at most a year."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (
            0 < timeout <= MAX_SECONDS  # False for NaN; no float() of a huge int
        )
    ):
        raise InvalidJobError(
            f"job_timeout must be a number of seconds > 0 and at most {MAX_SECONDS:g} "
            f"(a year), got {shown(timeout)}"
        )
    return float(timeout)


def check_scheduled_at(due: object) -> datetime:
    """An aware datetime from 1970-01-01 to 9999-01-01."""
    if not isinstance(due, datetime):
        raise InvalidJobError(f"scheduled_at must be a datetime, got {type(due).__name__}")
    if due.tzinfo is None or due.utcoffset() is None:
        raise InvalidJobError(
            "scheduled_at must be timezone-aware (e.g. datetime.now(timezone.utc))"
        )
    if not in_time_range(due):
        raise InvalidJobError(
            f"scheduled_at {due.isoformat()} is out of range: use a time from 1970-01-01 "
            "to 9999-01-01"
        )
    return due


def in_time_range(when: datetime) -> bool:
    """True for an aware time from `EARLIEST_AT` to `LATEST_AT` (compared in its own zone,
    so that no conversion can overflow near the ends)."""
    zone = when.tzinfo
    return EARLIEST_AT.replace(tzinfo=zone) <= when <= LATEST_AT.replace(tzinfo=zone)


def validate_request(item: object, *, config: Config, now: datetime, job_id: str) -> NewJob:
    """The row to insert for one enqueue request (an `EnqueueRequest` or a
    ``(job_type, payload)`` pair), or `InvalidJobError` saying what is wrong with it.

    Example::

        new = validate_request(("resize", "a.png"), config=Config(), now=now, job_id=i)
        assert new.status is JobStatus.PENDING
    """
    if isinstance(item, tuple):
        if len(item) != 2:
            raise InvalidJobError("each job is (job_type, payload) or an EnqueueRequest")
        item = EnqueueRequest(*item)
    elif not isinstance(item, EnqueueRequest):
        raise InvalidJobError("each job is (job_type, payload) or an EnqueueRequest")
    job_type = check_job_type(item.job_type)
    payload = encode_payload(item.payload, config.max_payload_bytes)
    priority = _check_int("priority", item.priority, PRIORITY_MIN, PRIORITY_MAX)
    retries = _check_int("max_retries", item.max_retries, 0, MAX_RETRIES_LIMIT)
    timeout = check_job_timeout(
        config.default_job_timeout if item.job_timeout is None else item.job_timeout
    )
    due = now if item.scheduled_at is None else check_scheduled_at(item.scheduled_at)
    unique_key = check_unique_key(item.unique_key)
    return NewJob(
        id=job_id,
        queue=config.queue_name,
        job_type=job_type,
        payload=payload,
        priority=priority,
        max_retries=retries,
        scheduled_at=due,
        job_timeout=timeout,
        status=JobStatus.PENDING if due <= now else JobStatus.SCHEDULED,
        unique_key=unique_key,
        trace_context=enqueue_context(),
    )


def check_status(status: JobStatus | str | None) -> JobStatus | None:
    """A status filter: None, a `JobStatus` or its value."""
    if status is None:
        return None
    try:
        return JobStatus(status)
    except ValueError:
        choices = ", ".join(s.value for s in JobStatus)
        raise KyuError(f"unknown status {shown(status)}: use one of {choices}") from None


def check_job_type_filter(job_type: object) -> str | None:
    """A job type filter: only what PostgreSQL could not take as text is refused (a
    filter matching no job is fine)."""
    if job_type is None:
        return None
    if not isinstance(job_type, str) or "\x00" in job_type or not _encodable(job_type):
        raise KyuError(
            f"job_type must be a str without NUL or lone surrogates, got {shown(job_type, 80)}"
        )
    return job_type


def check_age(older_than: object) -> timedelta:
    """An age from 0 to `MAX_DURATION` (now - age must stay a valid datetime)."""
    if not isinstance(older_than, timedelta) or not timedelta(0) <= older_than <= MAX_DURATION:
        raise KyuError(
            f"older_than must be a timedelta from 0 to {MAX_DURATION.days} days (100 years)"
        )
    return older_than


def check_final_statuses(statuses: Iterable[JobStatus | str] | JobStatus | str) -> list[JobStatus]:
    """Statuses a purge may delete: final ones only, at least one."""
    if isinstance(statuses, str | JobStatus):
        statuses = [statuses]
    try:
        wanted = [JobStatus(s) for s in statuses]
    except (ValueError, TypeError):
        wanted = []
    if not wanted or any(s not in FINAL_STATES for s in wanted):
        raise KyuError("only completed, cancelled and dead jobs can be purged")
    return wanted


# ---- progress (issue 14) ----

#: Largest progress value, in bytes of JSON: a progress report is rewritten often, so it
#: stays small (a counter, a percentage, a short message), not a result.
MAX_PROGRESS_BYTES = 64 * 1024


def encode_progress(value: object) -> str:
    """``value`` as the JSON text stored in ``kyu_jobs.progress``; `ProgressError` (saying
    what is wrong) when it cannot be stored.

    Example::

        assert encode_progress({"done": 3, "total": 10}) == '{"done":3,"total":10}'
    """
    try:
        text, size = _encode(value, "progress")
    except ValueError as exc:
        raise ProgressError(str(exc)) from None
    if size > MAX_PROGRESS_BYTES:
        raise ProgressError(
            f"progress is {size} bytes of JSON, over the limit of {MAX_PROGRESS_BYTES}: "
            "report a summary (counts, a percentage, a short message)"
        )
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise ProgressError(
            "progress must not contain NUL characters (PostgreSQL's jsonb refuses them)"
        )
    return text
