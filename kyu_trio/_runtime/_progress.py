"""Progress of running jobs: `Job.set_progress` keeps the latest value of each job in
memory, and one `ProgressFlusher` per worker pool writes them all in one statement, at
most every `PROGRESS_INTERVAL` seconds; the completer has a run's last value written
before the run's outcome.

    handler --set_progress--> [latest value per job] --flusher, <= 1 write / 0.5 s--> store

Setting progress never does I/O and never waits, whichever thread calls it (a plain
``def`` handler runs in a worker thread): a handler reporting 10,000 times in a tight
loop costs a dict update per call, and its pool at most one write per interval. Every
write is fenced by the run's lease, so a worker that lost a job writes nothing to it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from .._errors import KyuConnectionError, KyuError
from .._job import Job
from .._ports import Lease, Progress, Store
from .._text import one_line
from .._validation import encode_progress
from ._outage import Outage

#: Shortest time between two progress writes of a pool: each job's progress is visible
#: at most this long (plus one write) after it was set.
PROGRESS_INTERVAL = 0.5
#: Flushes that may miss a job's update before it is dropped: its row was being written
#: by another statement each time (SKIP LOCKED), or the job's lease is lost.
MAX_TRIES = 10
#: How long the last flush of a stopping pool may take.
FINAL_FLUSH_LIMIT = 1.0


@attrs.frozen
class _Update:
    progress: Progress
    tries: int = 0


class ProgressFlusher:
    """Holds the latest unwritten progress of each job of one pool, and writes it.

    `set` may be called from any thread; `run` is the pool's task that writes."""

    def __init__(self, store: Store, worker_id: str, log: logging.Logger) -> None:
        self._store = store
        self._worker_id = worker_id
        self._log = log
        self._outage = Outage(log, f"worker {worker_id} writing progress", cap=5.0)
        # Guards _pending and _token: handlers in worker threads set progress too.
        self._lock = threading.Lock()
        self._pending: dict[str, _Update] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake = trio.Event()
        self._writing = trio.Lock()
        #: The jobs whose handlers run now, by id: `Registry.execute` adds and removes
        #: each (one dict write each way per job; read from handler threads too).
        self.running: dict[str, Job] = {}

    def serve_here(self) -> None:
        """Make `Job.set_progress` report here from the calling task (a worker) and the
        threads and tasks it starts: once per worker task, not per job, as the per-job
        bookkeeping is `running` alone."""
        _reporting.set(self)

    def set(self, job: Job, text: str) -> None:
        """Keep ``text`` as the latest progress of ``job``'s run. Never blocks on I/O.
        Dropped once the run has ended (a thread abandoned at the job's timeout): its
        outcome is recorded already."""
        run = self.running.get(job.id)
        if run is None or run.attempt != job.attempt:
            return
        lease = Lease(job.id, job.attempt)
        with self._lock:
            idle = not self._pending
            self._pending[lease.id] = _Update(Progress(lease, text))
            token = self._token
        if idle and token is not None:
            # Thread-safe, never waits; a no-op once the run is over (an abandoned thread).
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._wake_up)

    def _wake_up(self) -> None:
        # Sets the event current when the callback runs, so a wake-up is never lost.
        self._wake.set()

    async def run(self) -> None:
        """Write pending progress until cancelled: at once when the first value comes,
        then at most every `PROGRESS_INTERVAL`; once more, briefly, when cancelled."""
        with self._lock:
            self._token = trio.lowlevel.current_trio_token()
            if self._pending:
                self._wake.set()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                lost = await self._flush(None)
                if lost is not None:
                    await trio.sleep(self._outage.failed(lost))
                await trio.sleep(PROGRESS_INTERVAL)
        finally:
            # The pool is stopping, its outcomes written: the last values of its runs
            # still land (the fence does not need the job to be running).
            with trio.CancelScope(shield=True), trio.move_on_after(FINAL_FLUSH_LIMIT):
                await self._flush(None)

    async def flush_ended(self, ids: Iterable[str]) -> None:
        """Write the pending progress of these jobs, whose runs have ended, now: the
        completer calls it before writing their outcomes, so that a job that shows its
        outcome shows its last progress too. Costs nothing when none of them has any.
        Best effort: what is not written now stays pending for the flusher."""
        if not self._pending:
            # Read without the lock: a value set just after this is written by the
            # flusher, as any other. Most batches end with no progress pending at all.
            return
        with self._lock:
            ended = [job_id for job_id in ids if job_id in self._pending]
        if ended:
            await self._flush(ended)

    async def _flush(self, ids: list[str] | None) -> KyuConnectionError | None:
        """Write the pending progress of ``ids`` (None: of every job); return the error
        if PostgreSQL could not be reached (the values stay pending)."""
        # One write at a time: an older value must never land after a newer one.
        async with self._writing:
            with self._lock:
                if ids is None:
                    batch, self._pending = self._pending, {}
                else:
                    batch = {i: self._pending.pop(i) for i in ids if i in self._pending}
            if not batch:
                return None
            updates = list(batch.values())
            try:
                written = set(await self._write([u.progress for u in updates]))
            except KyuConnectionError as exc:
                self._give_back(updates, count=False)
                return exc
            except BaseException:
                # Cancelled mid-write (the pool is stopping): the final flush writes them.
                self._give_back(updates, count=False)
                raise
            self._outage.recovered()
            self._give_back([u for u in updates if u.progress.lease.id not in written], count=True)
            return None

    async def _write(self, updates: list[Progress]) -> list[str]:
        """Write in one statement; if the store refuses it (a value PostgreSQL's jsonb
        does not take), write them one by one so that the others still land, and drop
        the refused one with an error logged."""
        try:
            return await self._store.set_progress(updates, self._worker_id)
        except KyuConnectionError:
            raise
        except (KyuError, ValueError) as exc:
            if len(updates) == 1:
                self._log.error(
                    "job %s: PostgreSQL refused its progress (%s); not recorded",
                    updates[0].lease.id,
                    one_line(str(exc)),
                )
                return [updates[0].lease.id]
        written: list[str] = []
        for update in updates:
            written += await self._write([update])
        return written

    def _give_back(self, updates: list[_Update], *, count: bool) -> None:
        """Keep unwritten updates for the next flush, unless a newer value replaced one
        meanwhile or (``count``) it missed `MAX_TRIES` flushes already."""
        kept = False
        with self._lock:
            for update in updates:
                job_id = update.progress.lease.id
                tries = update.tries + 1 if count else update.tries
                if job_id in self._pending or tries >= MAX_TRIES:
                    continue
                self._pending[job_id] = attrs.evolve(update, tries=tries)
                kept = True
        if kept:
            self._wake.set()


#: The flusher of the worker task running the calling handler (set once per worker task,
#: inherited by the threads and tasks the handler starts).
_reporting: contextvars.ContextVar[ProgressFlusher] = contextvars.ContextVar("kyu_trio.progress")


def report_progress(job: Job, value: Any) -> None:
    """What `Job.set_progress` does: check, encode, hand to the running pool."""
    from ._handlers import _current_job  # _handlers imports this module

    flusher, run = _reporting.get(None), _current_job.get(None)
    if flusher is None or run is None or (run.id, run.attempt) != (job.id, job.attempt):
        raise KyuError(
            f"set_progress() was called on job {job.id}, which is not the job running "
            "here: call current_job().set_progress(value) from the job's handler or "
            "middleware"
        )
    flusher.set(job, encode_progress(value))
