"""The producer's path: write validated jobs to the store and push the ready ones, with
one thread hop, and settle an insert whose answer was lost."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import trio

from .._errors import EnqueueOutcomeUnknown, KyuConnectionError, ServerError, TransactionError
from .._ports import NewJob, Ready
from ._service import Context

#: How long enqueue repeats an insert whose answer was lost before it gives up.
ENQUEUE_RETRY_LIMIT = 5.0


async def insert_and_push(ctx: Context, new_jobs: list[NewJob], now: datetime) -> list[str]:
    """Insert ``new_jobs`` (durable on return) and push those due now to the broker;
    return the id of each: its own, or that of the unfinished job holding its
    `unique_key` (then nothing was written for it)."""
    existing: dict[str, str] = {}
    push_failed: list[KyuConnectionError] = []

    def push(ready: list[Ready]) -> None:
        # Runs in the store's thread call right after the commit: one thread hop for
        # the whole enqueue instead of two. The rows are committed and will run even
        # if the push fails (the reaper's sweep pushes them once Redis is back), so a
        # failure is logged, not raised: raising would invite a duplicate enqueue.
        try:
            ctx.broker.push_blocking(ctx.queue, ready)
        except KyuConnectionError as exc:
            push_failed.append(exc)

    try:
        ready = await ctx.store.insert_jobs(new_jobs, now, after_commit=push, existing=existing)
    except ServerError:
        raise  # an error reply: nothing was written
    except KyuConnectionError as exc:
        existing.clear()  # filled again by the repeated insert
        ready = await _insert_again(ctx, new_jobs, now, push, exc, existing)
    if push_failed:
        ctx.push_failed(len(ready), push_failed[0])
    ctx.metrics.jobs_total.inc(len(new_jobs) - len(existing))
    if ctx.log.isEnabledFor(logging.DEBUG):
        for job in new_jobs:
            if job.id in existing:
                continue
            ctx.log.debug(
                "job %s enqueued as %s (type=%s)",
                job.id,
                job.status.value,
                job.job_type,
                extra={
                    "job_id": job.id,
                    "job_type": job.job_type,
                    "attempt": 0,
                    "kyu_event": "enqueued",
                },
            )
    return [existing.get(job.id, job.id) for job in new_jobs]


async def insert_in_transaction(
    ctx: Context, conn: Any, new_jobs: list[NewJob], now: datetime
) -> list[str]:
    """Write ``new_jobs`` through the caller's psycopg ``conn``, inside its transaction,
    never committing it; return their ids as `insert_and_push` does. Nothing is pushed:
    the row's trigger tells the serving workers at the caller's COMMIT (and nothing at
    all on a rollback)."""
    existing: dict[str, str] = {}
    from .._store._postgres import PostgresStore, insert_in_transaction

    if not isinstance(ctx.store, PostgresStore):
        raise TransactionError(
            f"conn= needs the PostgreSQL store; this queue uses {type(ctx.store).__name__}"
        )
    # Not abandoned on cancel: the connection is the caller's, and must not be in use
    # by a thread of ours once enqueue has returned or raised. The wait is one insert.
    await trio.to_thread.run_sync(insert_in_transaction, conn, new_jobs, now, existing)
    # jobs_total is not counted: the caller may yet roll back.
    if ctx.log.isEnabledFor(logging.DEBUG):
        for job in new_jobs:
            ctx.log.debug(
                "job %s written in the caller's transaction (type=%s)",
                job.id,
                job.job_type,
                extra={"job_id": job.id, "job_type": job.job_type, "kyu_event": "enqueued"},
            )
    return [existing.get(job.id, job.id) for job in new_jobs]


async def _insert_again(
    ctx: Context,
    new_jobs: list[NewJob],
    now: datetime,
    push: Callable[[list[Ready]], None],
    exc: KyuConnectionError,
    existing: dict[str, str],
) -> list[Ready]:
    """The insert failed with its outcome unknown: PostgreSQL may have committed it and
    only the answer been lost. Repeat it with the same ids (which never writes a row
    twice) until it is known, for up to ``ENQUEUE_RETRY_LIMIT`` seconds."""
    ids = [job.id for job in new_jobs]
    delay = 0.05
    with trio.move_on_after(ENQUEUE_RETRY_LIMIT):
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)
            try:
                return await ctx.store.insert_jobs(
                    new_jobs, now, after_commit=push, again=True, existing=existing
                )
            except KyuConnectionError as again:
                existing.clear()
                exc = again
    listed = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    raise EnqueueOutcomeUnknown(
        f"{exc} (whether the enqueue of {len(ids)} jobs was written is unknown: check "
        f"job {listed} with inspect() once the server is back)",
        ids,
    ) from None
