"""The seam between the runtime and I/O: the `Store` (PostgreSQL) and `Broker` (Redis)
protocols, and the small data classes that cross it.

Every state transition is a Store method whose effect is conditional on the row's
current state, so races between processes resolve in the store, not in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import attrs

from ._job import Job, JobStatus

if TYPE_CHECKING:
    from ._cron import CronEntry, CronState
    from ._processes import ProcessInfo


@attrs.frozen
class NewJob:
    """A validated job about to be inserted; ``payload`` is its JSON text."""

    id: str
    queue: str
    job_type: str
    payload: str
    priority: int
    max_retries: int
    scheduled_at: datetime
    job_timeout: float
    status: JobStatus  # PENDING when due now, SCHEDULED when due later
    # While an unfinished job of the queue holds this key, inserting writes nothing.
    unique_key: str | None = None
    # The enqueuing span's trace context, as JSON text (see `_tracing`); None untraced.
    trace_context: str | None = None


@attrs.frozen
class Ready:
    """A job that is ready to run: its id and what orders it in the broker."""

    id: str
    priority: int
    seq: int


@attrs.frozen
class Lease:
    """A worker's hold on a running job: the claim token that fences its writes."""

    id: str
    attempt: int


def _default_outcome(failure: Failure) -> str:
    if failure.status is JobStatus.SCHEDULED:
        return "snoozed"
    return "dead" if failure.status is JobStatus.DEAD else "failed"


@attrs.frozen
class Failure:
    """A failed run, with the state the policy decided: FAILED (retry at ``due``) or DEAD;
    or a snoozed run: SCHEDULED at ``due``, ``retry_count`` and the job's error unchanged.

    ``outcome`` is what the run's `Attempt` records (``failed`` or ``dead`` by default;
    ``timed_out``, ``lost``), ``traceback`` the handler's exception, formatted."""

    lease: Lease
    status: JobStatus
    error_message: str
    due: datetime | None = None
    outcome: str = attrs.field(
        default=attrs.Factory(_default_outcome, takes_self=True), kw_only=True
    )
    traceback: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class Fence:
    """The maintenance lease as held: its holder and its term, which grows each time the
    lease changes holder. A fenced write is conditional on both still being current, so a
    deposed leader's late write changes nothing.

    Example::

        fence = await store.lead("kyu:default", worker_id, now, ttl=5.0)
    """

    holder: str
    term: int


@attrs.frozen
class LeaderInfo:
    """Who holds a queue's maintenance lease, and until when."""

    holder: str
    term: int
    expires_at: datetime


@attrs.frozen
class Limit:
    """Fleet-wide limits of one job type: at most ``concurrency`` running at once, at most
    ``rate_count`` starts in any window of ``rate_per`` seconds (None: no such limit)."""

    concurrency: int | None = None
    rate_count: int | None = None
    rate_per: float | None = None


@attrs.frozen
class Held:
    """Why ready ids were not claimed: the queue is paused, or their type is limited
    (``limited``: job type -> those ids, for `Store.claim_limited`)."""

    paused: bool
    limited: dict[str, list[str]]


@attrs.frozen
class LimitedClaim:
    """What `Store.claim_limited` took, and when the type's rate limit next lets a start
    through (None: not rate-limited now, or no rate limit)."""

    claimed: list[Job]
    next_start: datetime | None


@attrs.frozen
class QueueStats:
    counts: dict[JobStatus, int]
    oldest_due: datetime | None  # earliest due time among ready jobs not yet started
    paused: bool = False

    def lag(self, now: datetime) -> float:
        """Seconds the longest-waiting ready job has waited past its due time (0 if none)."""
        if self.oldest_due is None:
            return 0.0
        return max((now - self.oldest_due).total_seconds(), 0.0)


class CancelOutcome:
    CANCELLED = "cancelled"
    NOT_CANCELLABLE = "not_cancellable"
    NOT_FOUND = "not_found"


@attrs.frozen
class CancelResult:
    outcome: str
    queue: str | None = None


class Store(Protocol):
    """Durable job state: what `Queue(store=...)` accepts. Implementations:
    `PostgresStore` (the default) and `MemoryStore`.

    Unstable: this protocol is for writing adapters and may change in any release
    until 1.0; applications should not call its methods.

    Example::

        queue = Queue(store=MemoryStore(), broker=MemoryBroker())
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def insert_jobs(
        self,
        jobs: Sequence[NewJob],
        now: datetime,
        after_commit: Callable[[list[Ready]], None] | None = None,
        *,
        again: bool = False,
        existing: dict[str, str] | None = None,
    ) -> list[Ready]:
        """Insert jobs in order; return the PENDING ones (to push) with their sequence.

        A job with a `unique_key` held by an unfinished job of its queue (committed, or
        written earlier in this call) is not written: ``existing`` maps its id to the
        holder's id. Decided by the store, so concurrent inserts write one job per key.

        ``after_commit`` is called with them once the rows are committed, in the same
        worker thread call where the store uses one (so it may block, and must not
        raise): the enqueue path pushes to the broker there, saving a thread hop.

        ``again=True`` repeats an insert whose outcome is unknown (its answer was lost):
        rows that already exist with these ids are the earlier attempt's, and are kept,
        not written twice; those still pending are returned (and pushed) again.
        """
        ...

    async def get_job(self, job_id: str) -> Job | None:
        """The job with its result and its attempt history; None if there is none."""
        ...

    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        """The jobs among ``ids`` that exist, of any queue, with their results (their
        ``attempts`` left empty); one query however many ids."""
        ...

    async def cancel_job(self, job_id: str, now: datetime) -> CancelResult:
        """PENDING, SCHEDULED, FAILED or RUNNING -> CANCELLED, in one statement. A running
        job's run is recorded in its history (outcome ``cancelled``) and the process that
        runs it is told when the change commits (the listener's ``cancelled`` callback,
        see `PostgresStore.listen_enqueued`); that worker's own later write of the run is
        fenced off and writes nothing."""
        ...

    async def cancel_jobs(self, ids: Sequence[str], now: datetime) -> dict[str, CancelResult]:
        """`cancel_job` for each of ``ids``, in one statement: job id -> CANCELLED (with
        its queue) or NOT_CANCELLABLE, for the jobs that exist (unknown ids are left
        out). The processes running any of them are told as `cancel_job` tells them."""
        ...

    async def delete_jobs(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        """Delete the jobs among ``ids`` that are not RUNNING, with their attempt history,
        in one statement; return (id, queue) of each deleted job. Unknown ids are
        ignored."""
        ...

    async def dead_jobs(self, queue: str, limit: int) -> list[Job]: ...

    async def claim_jobs(
        self, queue: str, ids: Sequence[str], worker_id: str, now: datetime
    ) -> list[Job]:
        """Move ready jobs among ``ids`` to RUNNING for this worker (attempt + 1): pending
        ones whatever their ``scheduled_at`` (a producer's clock may run ahead), scheduled
        and failed ones once due."""
        ...

    async def claimed_by(self, queue: str, ids: Sequence[str], worker_id: str) -> list[Job]:
        """The jobs among ``ids`` that are RUNNING under ``worker_id``: what a claim whose
        answer was lost did take."""
        ...

    async def complete_jobs(
        self,
        leases: Sequence[Lease],
        worker_id: str,
        now: datetime,
        results: Sequence[str | None] | None = None,
    ) -> list[str]:
        """RUNNING -> COMPLETED for jobs this worker still holds; return those ids.

        ``results`` (aligned with ``leases``, None for none at all) are the handlers'
        return values as JSON text, stored as each job's result. The completed run's
        `Attempt` is not written: it is read back from the row (attempt, locked_by,
        locked_at, completed_at), which keeps the hot path to one narrow update."""
        ...

    async def fail_jobs(
        self, failures: Sequence[Failure], worker_id: str, now: datetime
    ) -> list[str]:
        """RUNNING -> FAILED (retry at ``due``, retry_count + 1), DEAD or, for a snooze,
        SCHEDULED (at ``due``, retry_count and error_message unchanged), for jobs that
        ``worker_id`` still holds under each failure's lease, recording the run in the
        job's attempt history; return those ids."""
        ...

    async def requeue_jobs(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> list[Ready]:
        """RUNNING -> PENDING without spending a retry (shutdown), recording the run as
        ``requeued`` in the job's attempt history; return what to push."""
        ...

    async def heartbeat(
        self, leases: Sequence[Lease], worker_id: str, now: datetime
    ) -> dict[str, JobStatus | None]:
        """Refresh ``heartbeat_at`` of the jobs ``worker_id`` still holds under these
        leases. Return those it no longer holds (cancelled, or rescued by the reaper): job
        id -> the row's status now (None: no such row). A row another statement is
        writing right now is skipped, and counts as held."""
        ...

    async def promote_due(self, queue: str, now: datetime, limit: int) -> list[Ready]:
        """SCHEDULED/FAILED jobs due by ``now`` -> PENDING, in due order; at most ``limit``."""
        ...

    async def stale_jobs(
        self, queue: str, now: datetime, stale_before: datetime, limit: int
    ) -> list[Job]:
        """Up to ``limit`` RUNNING jobs whose heartbeat is older than ``stale_before`` and
        whose own ``job_timeout`` has passed since their claim, stalest first: jobs of a
        lost worker. Only reads; the reaper fails them with `fail_jobs`, fenced by each
        job's own lease (``locked_by`` and ``attempt``)."""
        ...

    async def pending_after(self, queue: str, after_seq: int, limit: int) -> list[Ready]:
        """PENDING jobs with ``seq > after_seq`` in seq order (for resyncing the broker)."""
        ...

    async def pending_among(self, queue: str, ids: Sequence[str]) -> list[Ready]:
        """Those of ``ids`` that are PENDING in ``queue`` now."""
        ...

    async def queue_stats(self, queue: str, now: datetime) -> QueueStats:
        """Counts by status and the due time of the longest-waiting ready job."""
        ...

    async def ping(self) -> None:
        """Raise `KyuConnectionError` unless the store answers."""
        ...

    async def schema_version(self) -> tuple[int, int]:
        """The schema version the database had when `open` ran (before it migrated; 0 for
        none), and the one it has now."""
        ...

    async def retry_jobs(self, ids: Sequence[str], now: datetime) -> list[tuple[Ready, str]]:
        """DEAD/FAILED -> PENDING with retry_count 0; returns (what to push, its queue)."""
        ...

    async def retry_dead(self, queue: str, now: datetime, limit: int) -> list[Ready]: ...

    async def list_jobs(
        self, queue: str, status: JobStatus | None, job_type: str | None, limit: int
    ) -> list[Job]:
        """The queue's jobs, newest first, optionally filtered."""
        ...

    async def completed_since(self, queue: str, since: datetime) -> int: ...

    async def purge(
        self, queue: str, statuses: Sequence[JobStatus], before: datetime, limit: int
    ) -> int:
        """Delete up to ``limit`` jobs in ``statuses`` last updated before ``before``."""
        ...

    async def lead(self, queue: str, holder: str, now: datetime, ttl: float) -> Fence | None:
        """Take the queue's maintenance lease if it is free or expired, or renew it if
        ``holder`` has it, until ``now + ttl``; return it as held, or None if another
        holder's lease runs. The term grows only when the holder changes. One statement:
        of many processes asking at once, one gets it."""
        ...

    async def resign(self, queue: str, fence: Fence) -> None:
        """Give the lease up at once (a graceful stop), if ``fence`` still holds it."""
        ...

    async def leader(self, queue: str) -> LeaderInfo | None:
        """The queue's lease as recorded (possibly expired); None if never taken."""
        ...

    # ---- retention (the pruner) ----

    async def prune(self, queue: str, status: JobStatus, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the queue's jobs in the final ``status`` that finished
        before ``before`` (``completed_at`` for completed jobs, ``updated_at`` for dead and
        cancelled ones), oldest first, with their attempt history; return how many. One
        statement; rows another statement holds are skipped, never waited for."""
        ...

    # ---- cron: periodic jobs (kyu_cron) ----

    async def sync_cron(
        self, queue: str, entries: Sequence[CronEntry], now: datetime, fence: Fence
    ) -> bool:
        """Record the entries the leader registers: a new one starts at its
        `initial_tick`, a changed one keeps its last tick, and rows of the queue not
        among ``entries`` are marked unregistered. Fenced; False (nothing written) if
        ``fence`` is not the queue's lease."""
        ...

    async def fire_cron(
        self,
        queue: str,
        name: str,
        expected: datetime,
        tick: datetime,
        job: NewJob | None,
        fence: Fence,
        now: datetime,
    ) -> list[Ready] | None:
        """Move entry ``name``'s last tick from ``expected`` to ``tick`` and insert
        ``job`` (None: a skipped tick, no job), in one statement, fenced; return what to
        push (``job`` as `Ready`). None when nothing was written: the last tick is no
        longer ``expected`` (another leader, or an earlier attempt, fired it) or the
        lease is gone. So each tick is written once, however often it is tried."""
        ...

    async def cron_states(self, queue: str) -> list[CronState]:
        """The queue's cron entries as recorded, by name."""
        ...

    async def run_cron_now(
        self, queue: str, name: str, job_id: str, now: datetime, default_job_timeout: float
    ) -> Ready | None:
        """Insert one job of entry ``name`` as recorded (its job type, payload, priority,
        max_retries, and job_timeout or ``default_job_timeout``), pending and due now,
        with id ``job_id``; return it to push. Its last tick is not touched. None (and
        nothing written) when the queue has no such entry. One statement."""
        ...

    # ---- pausing a queue, and limits per job type ----

    async def set_paused(self, queue: str, paused: bool, now: datetime) -> None:
        """Pause or resume the queue: while it is paused, `claim_jobs` and `claim_limited`
        take nothing of it."""
        ...

    async def is_paused(self, queue: str) -> bool: ...

    async def held_among(self, queue: str, ids: Sequence[str], now: datetime) -> Held:
        """Of ``ids`` that `claim_jobs` did not take, the ready ones it held back, and why."""
        ...

    async def set_limits(
        self, queue: str, limits: dict[str, Limit], unlimited: Sequence[str], now: datetime
    ) -> None:
        """Record the limits of these job types, and that ``unlimited`` types have none."""
        ...

    async def claim_limited(
        self, queue: str, job_type: str, ids: Sequence[str], worker_id: str, now: datetime
    ) -> LimitedClaim:
        """Claim ready jobs of the limited ``job_type`` among ``ids``, as many as its limits
        allow now, highest priority first; decided under a lock of the type's limits, so
        concurrent claims in any number of processes never exceed them."""
        ...

    # ---- progress of running jobs (issue 14) ----

    async def set_progress(self, updates: Sequence[Progress], worker_id: str) -> list[str]:
        """Store each update's progress on its job, in one statement, where the job's
        row still carries the update's lease (its ``attempt``, and ``locked_by`` =
        ``worker_id``) whatever its status: the last value of a run may be written just
        after the run's outcome, never over a later run. Return the ids written. A row
        another statement is writing at that moment is skipped, not waited for (the
        caller tries it again)."""
        ...

    # ---- which processes serve a queue (kyu_processes) ----

    async def record_process(self, queue: str, process: ProcessInfo, ttl: float) -> None:
        """Write ``process``'s row (insert or refresh), expiring ``ttl`` seconds after its
        ``last_seen``; its ``leader`` is not stored (read from the lease)."""
        ...

    async def remove_process(self, queue: str, process_id: str) -> None:
        """Delete the row of ``process_id`` (a process that stops)."""
        ...

    async def processes(self, queue: str, now: datetime) -> list[ProcessInfo]:
        """The queue's processes whose row has not expired by ``now``, oldest first
        (``started_at``), each with ``leader`` set if it holds the queue's maintenance
        lease and that lease has not expired."""
        ...

    async def prune_processes(self, queue: str, before: datetime) -> int:
        """Delete the rows of the queue's processes that expired before ``before``; return
        how many."""
        ...


class Broker(Protocol):
    """The dispatch queue: per-queue sets of ready job ids, lowest score first. What
    `Queue(broker=...)` accepts; implementations: `RedisBroker` (the default) and
    `MemoryBroker`. Unstable, as `Store` is: for adapters, and it may change before 1.0.

    Example::

        broker = MemoryBroker()
        queue = Queue(broker=broker)  # jobs stay in PostgreSQL, dispatch goes in memory
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def push(self, queue: str, entries: Sequence[Ready]) -> None: ...

    def push_blocking(self, queue: str, entries: Sequence[Ready]) -> None:
        """`push`, blocking: for a worker thread (a store's ``after_commit``), never for
        the event loop. Raises `KyuConnectionError`."""
        ...

    async def pop(self, queue: str, count: int) -> dict[str, float]:
        """Pop up to ``count`` ids at once, without waiting: id -> score, lowest first."""
        ...

    async def pop_wait(self, queue: str, wait: float, count: int = 1) -> dict[str, float]:
        """Pop up to ``count`` ids, waiting up to ``wait`` seconds for the first to arrive."""
        ...

    async def restore(self, queue: str, popped: dict[str, float]) -> None:
        """Put popped ids back with the scores they had (a pop we could not act on)."""
        ...

    async def remove(self, queue: str, ids: Sequence[str]) -> None: ...

    async def size(self, queue: str) -> int: ...

    async def missing(self, queue: str, ids: Sequence[str]) -> list[str]:
        """The ids among ``ids`` that are not in the queue's set."""
        ...

    async def ping(self) -> None:
        """Raise `KyuConnectionError` unless the broker answers."""
        ...

    async def claim_epoch(self, queue: str) -> bool:
        """Set the queue's marker key if absent. True means it was absent: the broker
        lost its data (flushed, restarted empty) or is new, and must be resynced."""
        ...

    async def has_waiters(self, queue: str) -> bool:
        """Whether some process waits for a `result()` of this queue. May answer from what
        it learnt up to a second ago: workers ask after every batch of outcomes."""
        ...

    async def publish_finished(self, queue: str, ids: Sequence[str]) -> None:
        """Tell the queue's waiters that these jobs reached a final state (they look each
        one up: a stray id costs a lookup, not a wrong answer)."""
        ...

    async def wait_finished(self, queue: str, ids: Sequence[str], wait: float) -> bool:
        """Mark the queue as waited on, and wait up to ``wait`` seconds for a
        `publish_finished` naming one of ``ids``; True if one came."""
        ...

    async def park(self, queue: str, job_type: str, popped: dict[str, float]) -> None:
        """Set popped ids of a limited job type aside (with their scores), out of the
        queue's set: other types flow past them. `unpark` brings them back."""
        ...

    async def unpark(self, queue: str, job_type: str, count: int) -> int:
        """Move up to ``count`` parked ids of ``job_type`` back to the queue's set, lowest
        score first, atomically; return how many moved."""
        ...


# ---- progress of running jobs (issue 14) ----


@attrs.frozen
class Progress:
    """The latest progress of a run, for `Store.set_progress`: ``progress`` is JSON text."""

    lease: Lease
    progress: str
