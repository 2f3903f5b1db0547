"""The worker pool: one fetcher, N workers, one completer and one heartbeat per process.

    broker --pop--> fetcher --claim--> [jobs channel] --> workers --> [outcomes] --> completer
                                                                                    (batched writes)

The fetcher never claims more jobs than there are idle workers, so a claimed job starts
at once; the completer writes whatever outcomes have piled up in one statement per
kind. Every write after the claim is fenced by the claim's lease (worker id + attempt).

What the pool promises, whatever happens:
- a handler's exception, of any kind but trio's own cancellation, is that job's failure;
- an outcome is kept and retried (its job heartbeating on) until it is written; only a
  shutdown gives up, after its deadline, and then the reaper's rescue is the result;
- when the pool stops for any reason (shutdown, cancellation, a crash of one of its
  tasks), every job it still holds is requeued in a shielded, bounded cleanup.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterator

import attrs
import trio

from .. import _tracing
from .._config import Config, shown
from .._errors import KyuConnectionError, KyuError, ServerError
from .._job import Job, JobStatus
from .._ports import Failure, Lease
from .._retry import RetryPolicy
from .._snooze import Snooze, backoff_seconds, snooze_of
from .._text import indented_block, one_line
from .._validation import encode_result
from ._gate import ClaimGate
from ._handlers import Registry
from ._outage import Outage
from ._outcomes import (
    Kind,
    Outcome,
    decide_failure,
    decide_snooze,
    error_message,
    format_traceback,
    result_error_message,
    snooze_limit_message,
    timeout_message,
)
from ._progress import ProgressFlusher
from ._service import Context

#: How long an idle fetcher blocks in one pop; bounds how late it notices a shutdown.
POP_WAIT = 1.0
#: Concurrent fetchers per process.
FETCHERS = 2
#: Most outcomes written in one statement.
MAX_BATCH = 500
#: With a backlog, how long a fetcher waits for half of the workers to be free before
#: claiming for those that are (seconds). A claim costs a round trip and a thread hop
#: however many rows it takes: claiming about 60 at a time instead of 30 made 2 processes
#: x 100 workers about 20 % faster (alternating rounds, bench.peers' INCR job body). An
#: idle queue never waits: the fetcher only lingers when its last pop filled every free
#: slot.
CLAIM_LINGER = 0.005
#: How often a job's timeout is armed on its cancel scope once it has run that long
#: (seconds); see `WorkerPool._arm_deadlines`.
ARM_PERIOD = 0.5
#: Once shutdown has cancelled the running jobs (or serve() is cancelled, or crashed), how
#: long the last outcome writes may take before we give up on them (the reaper then
#: rescues their jobs). Bounds shutdown even when PostgreSQL hangs.
CLEANUP_LIMIT = 3.0
#: Longest a batch's announcement to `result()` waiters may hold up the next batch, and
#: how long announcing stays off after one failed.
ANNOUNCE_LIMIT = 0.5
ANNOUNCE_PAUSE = 10.0
#: Stored instead of an error message the database refused.
UNSTORABLE_MESSAGE = "(the error message could not be stored)"


def is_cancellation(exc: BaseException) -> bool:
    """True for trio's own cancellation, alone or as the only content of a group (a
    handler's nursery cancelled along with its job); everything else a handler raises is
    that job's failure."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False


class WorkerPool:
    """Runs jobs of one queue until stopped (``drain=False``) or until the broker has no
    ready job left (``drain=True``, for `Queue.run_once`)."""

    def __init__(
        self,
        context: Context,
        *,
        config: Config,
        registry: Registry,
        worker_id: str,
        drain: bool,
    ) -> None:
        self._ctx = context
        self._config = config
        self._metrics = context.metrics
        self._queue = context.queue
        self._store = context.store
        self._broker = context.broker
        self._clock = context.clock
        self._registry = registry
        self._worker_id = worker_id
        self._drain = drain
        self._log = context.log
        self._policy = RetryPolicy(config.max_backoff, config.retry_jitter)
        self._slots = trio.Semaphore(config.workers)
        self._gathering = trio.Lock()
        # One thread per worker for plain `def` handlers: with trio's default limit (40)
        # a job could wait for a thread while its timeout runs.
        self._threads = trio.CapacityLimiter(config.workers)
        self._held: dict[str, Job] = {}  # claimed and not yet recorded: heartbeat these
        self._job_scopes: set[trio.CancelScope] = set()
        # Scopes of writes and lookups that must end by the give-up time once shutdown
        # sets it (infinite while serving: an outcome is retried until it is written).
        self._bounded_scopes: set[trio.CancelScope] = set()
        self._give_up_at = math.inf
        self._fetch_scopes: list[trio.CancelScope] = []
        self._stopping = False
        self._workers_done = trio.Event()
        self._record_outage = Outage(self._log, f"worker {worker_id} recording outcomes", cap=2.0)
        self._cancelling = False
        #: With ``drain=True``, every outcome the store took, in the order the runs
        #: finished (what `Queue.run_once` reports); not kept while serving, where it
        #: would only grow.
        self.recorded: list[Outcome] | None = [] if drain else None
        self._written: set[str] = set()  # ids the store took, until `_record` reports them
        # Cancelling running jobs: the scope of each job whose handler runs now, and the
        # jobs held here whose row says the run is over (cancelled, or rescued), with
        # that status, until their outcome is logged.
        self._run_scopes: dict[str, trio.CancelScope] = {}
        # Deadlines of running jobs not yet set on their scope (see `_arm_deadlines`).
        self._unarmed: dict[trio.CancelScope, float] = {}
        self._lost: dict[str, str] = {}
        self._progress = ProgressFlusher(self._store, worker_id, self._log)
        # The tracing hooks (the `otel` extra), looked up once per claim, not per job.
        self._tracing = _tracing.hooks()
        self._gate = ClaimGate(context, registry, worker_id)  # pause and limits
        self._limits_recorded = trio.Event()

    # ---- control -------------------------------------------------------------------

    def stop_fetching(self) -> None:
        """Take no new jobs; jobs already claimed run on."""
        self._stopping = True
        for scope in self._fetch_scopes:
            scope.cancel()

    def cancel_jobs(self) -> None:
        """Cancel every running job now; each goes back to pending without spending a retry.
        Outcomes not written within ``CLEANUP_LIMIT`` seconds are given up."""
        self.stop_fetching()
        self._cancelling = True
        self._give_up_after(CLEANUP_LIMIT)
        for scope in list(self._job_scopes):
            scope.cancel()

    async def shutdown(self, grace: float) -> None:
        """Graceful stop: no new jobs, ``grace`` seconds for running ones, then cancel them."""
        self.stop_fetching()
        # Outcomes waiting out a PostgreSQL outage may hold shutdown up for the grace
        # period and the cleanup limit, not longer.
        self._give_up_after(grace + CLEANUP_LIMIT)
        with trio.move_on_after(grace):
            await self._workers_done.wait()
        self.cancel_jobs()

    def _give_up_after(self, seconds: float) -> None:
        self._give_up_at = min(self._give_up_at, trio.current_time() + seconds)
        for scope in self._bounded_scopes:
            scope.deadline = self._give_up_at

    @contextlib.contextmanager
    def _until_give_up(self) -> Iterator[trio.CancelScope]:
        """A scope that ends at the give-up time, also when shutdown sets it later."""
        with trio.CancelScope(deadline=self._give_up_at) as scope:
            self._bounded_scopes.add(scope)
            try:
                yield scope
            finally:
                self._bounded_scopes.discard(scope)

    # ---- the tasks -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until the fetchers stop (shutdown, or a drained broker with ``drain=True``)
        and every outcome is written. Raises whatever a task of the pool raised unexpectedly,
        after requeueing every job the pool still holds."""
        jobs_send, jobs_recv = trio.open_memory_channel[Job](self._config.workers)
        out_send, out_recv = trio.open_memory_channel[Outcome](math.inf)
        all_written = trio.Event()
        try:
            async with trio.open_nursery() as outer:
                # Not awaited here: a read-only PostgreSQL must not keep serve() from
                # starting; the fetchers wait for it instead (no claim before the limits
                # are in place).
                outer.start_soon(self._record_limits)
                outer.start_soon(self._gate.unparker)
                outer.start_soon(self._heartbeat)
                outer.start_soon(self._arm_deadlines)
                outer.start_soon(self._progress.run)
                outer.start_soon(self._completer, out_recv, all_written)
                async with out_send, jobs_recv:
                    try:
                        async with trio.open_nursery() as workers, jobs_send:
                            for _ in range(self._config.workers):
                                workers.start_soon(
                                    self._worker, jobs_recv.clone(), out_send.clone()
                                )
                            # Two fetchers keep a pop+claim round trip in flight while the
                            # other hands jobs out; slots still bound what both claim.
                            for _ in range(FETCHERS):
                                workers.start_soon(self._fetcher, jobs_send.clone())
                            task_status.started()
                    finally:
                        self._workers_done.set()
                # Every worker has handed over its last outcome (closing our end of the
                # channel): wait until the completer has written them, then stop the
                # heartbeat. Nothing else ends this nursery early, so an exception raised
                # by any of its tasks reaches our caller instead of being cancelled away.
                await all_written.wait()
                outer.cancel_scope.cancel()
        finally:
            # Claimed jobs whose outcome is not written: never started (still in the
            # channel when the workers stopped), or left by a crash. Put them back.
            if self._held:
                self._give_up_after(CLEANUP_LIMIT)
                leftovers = [Outcome(Kind.REQUEUE, job, 0.0) for job in self._held.values()]
                with trio.CancelScope(shield=True):
                    await self._record(leftovers)

    async def _record_limits(self) -> None:
        outage = Outage(self._log, f"worker {self._worker_id} recording its job type limits")
        while True:
            try:
                await self._gate.record_limits()
            except KyuConnectionError as exc:
                await outage.wait(exc)
                continue
            outage.recovered()
            self._limits_recorded.set()
            return

    async def _take_slots(self, backlog: bool) -> int:
        """Wait for a free worker; return how many are free now, all taken for one claim."""
        # One fetcher gathers at a time: two waiting on the semaphore at once would each
        # get every other freed slot, and each claim half as many jobs.
        async with self._gathering:
            await self._slots.acquire()
            taken = 1
            try:
                # Workers finishing in the same scheduling rounds release their slots
                # during these checkpoints: gather until a round frees none, so that one
                # claim serves all of them instead of one small claim each (a claim costs
                # a round trip and a thread hop however many rows it takes).
                while taken < MAX_BATCH:
                    await trio.lowlevel.checkpoint()
                    before, taken = taken, self._grab_free_slots(taken)
                    if taken == before:
                        break
                # With a backlog, free workers also wait a moment for others to finish.
                want = min(self._config.workers // 2, MAX_BATCH)
                if backlog and taken < want:
                    with trio.move_on_after(CLAIM_LINGER):
                        while taken < want:
                            await self._slots.acquire()
                            taken += 1
            except BaseException:
                # Cancelled (shutdown) while gathering: the slots were never used.
                self._release_slots(taken)
                raise
            return taken

    def _grab_free_slots(self, taken: int) -> int:
        """Take every slot free now, up to `MAX_BATCH` in all; return how many are taken."""
        while taken < MAX_BATCH:
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                break
            taken += 1
        return taken

    def _release_slots(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _fetcher(self, jobs_send: trio.MemorySendChannel[Job]) -> None:
        outage = Outage(self._log, f"worker {self._worker_id} fetching from {self._queue!r}")
        scope = trio.CancelScope()
        self._fetch_scopes.append(scope)
        if self._stopping:
            scope.cancel()
        # While pops fill every free slot the queue has a backlog: a plain pop is one
        # round trip. Otherwise go straight to the blocking pop, which returns at once
        # when ids are waiting, so an idle worker's pickup is a single thread call.
        busy = True
        async with jobs_send:
            with scope:
                await self._limits_recorded.wait()
                while True:
                    if self._gate.paused:
                        if self._drain:
                            return
                        await self._gate.wait_resumed()
                    free = await self._take_slots(busy)
                    try:
                        popped = {}
                        if busy or self._drain:
                            popped = await self._broker.pop(self._queue, free)
                            if not popped and self._drain:
                                self._release_slots(free)
                                return
                        if not popped:
                            popped = await self._broker.pop_wait(self._queue, POP_WAIT, free)
                        busy = len(popped) >= free
                    except KyuConnectionError as exc:
                        self._release_slots(free)
                        await outage.wait(exc)
                        continue
                    # The ids are out of the broker now: from here on a cancellation must
                    # not lose them, so the claim and hand-off are shielded (the backoff
                    # after a failed claim is not: shutdown must not wait for it). Only
                    # shutdown's give-up time ends a claim PostgreSQL does not answer
                    # (frozen): the ids go back, and the reaper rescues any row it took.
                    unknown: KyuConnectionError | None = None
                    refused: ServerError | None = None
                    claimed = []
                    with trio.CancelScope(shield=True):
                        with self._until_give_up() as bound:
                            try:
                                claimed = await self._claim_popped(popped, outage)
                            except ServerError as exc:
                                # An error reply: nothing was committed, the ids go back.
                                await self._restore(popped)
                                refused = exc
                            except KyuConnectionError as exc:
                                unknown = exc
                        if bound.cancelled_caught:
                            await self._restore(popped)
                            unknown = refused = None
                        self._hand_out(claimed, jobs_send)
                    if refused is not None:
                        self._release_slots(free)
                        await outage.wait(refused)
                        continue
                    if unknown is not None:
                        claimed = await self._resolve_claim(popped, unknown, outage)
                        self._hand_out(claimed, jobs_send)
                    self._release_slots(free - len(claimed))

    def _hand_out(self, claimed: list[Job], jobs_send: trio.MemorySendChannel[Job]) -> None:
        if claimed:
            self._tracing = _tracing.hooks()
        for job in claimed:
            self._held[job.id] = job
            jobs_send.send_nowait(job)  # room is guaranteed by the slots

    async def _claim_popped(self, popped: dict[str, float], outage: Outage) -> list[Job]:
        if not popped:
            return []
        if self._stopping:
            # Shutdown began while we were waiting in the pop: hand the ids back untouched.
            await self._restore(popped)
            return []
        return await self._claim(popped, outage)

    async def _restore(self, popped: dict[str, float]) -> None:
        # If even this fails, the reaper's sweep pushes pending rows the broker lacks.
        with contextlib.suppress(KyuConnectionError):
            await self._broker.restore(self._queue, popped)

    async def _claim(self, popped: dict[str, float], outage: Outage) -> list[Job]:
        """Claim the popped ids. Raises `KyuConnectionError` when the outcome is unknown."""
        # Ids the claim does not take are dropped: their rows are not pending (another
        # worker holds them, or they finished, were cancelled, or wait for a retry that
        # the scheduler will push when due). A pending row is always claimable, whatever
        # its scheduled_at says: it is due by definition, whichever clock wrote it.
        claimed = await self._store.claim_jobs(
            self._queue, list(popped), self._worker_id, self._clock.now()
        )
        if len(claimed) < len(popped):  # stale ids, or held back: paused, limited
            claimed += await self._gate.held_back(popped, claimed)
        outage.recovered()
        now = self._clock.now()
        for job in claimed:
            self._metrics.started(job.job_type, (now - job.scheduled_at).total_seconds())
        if self._log.isEnabledFor(logging.DEBUG):
            for job in claimed:
                self._log.debug(
                    "job %s claimed (type=%s attempt=%d)",
                    job.id,
                    job.job_type,
                    job.attempt,
                    extra={
                        "job_id": job.id,
                        "job_type": job.job_type,
                        "attempt": job.attempt,
                        "kyu_event": "claimed",
                    },
                )
        return claimed

    async def _resolve_claim(
        self, popped: dict[str, float], exc: KyuConnectionError, outage: Outage
    ) -> list[Job]:
        """A claim failed with its outcome unknown: PostgreSQL may have committed it and
        only the answer been lost. Find out which rows it took (they are ``running`` under
        our worker id) and run those; give the others back to the broker. Giving them all
        back would leave the taken rows ``running`` with no runner, until the reaper
        spent a retry on a job that never ran.

        Not shielded: shutdown or cancellation stops the search, and then every id goes
        back (a row the lost claim did take is refused by the next claim and rescued by
        the reaper)."""
        try:
            while True:
                await trio.sleep(outage.failed(exc))
                try:
                    claimed = await self._store.claimed_by(
                        self._queue, list(popped), self._worker_id
                    )
                    break
                except KyuConnectionError as again:
                    exc = again
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                self._log.warning(
                    "stopping before learning whether a claim of %d jobs was committed: "
                    "their ids go back to Redis (the reaper rescues any it took)",
                    len(popped),
                )
                await self._restore(popped)
            raise
        outage.recovered()
        # A row running under our id that we already hold was claimed before, through
        # another copy of its id (the sweep may push an id twice): it is not this claim's,
        # and running it again would run one claim twice. Its copy is simply dropped.
        claimed = [job for job in claimed if job.id not in self._held]
        taken = {job.id for job in claimed}
        # Shielded: from here the taken rows are ours and must reach the workers.
        with trio.CancelScope(shield=True):
            await self._restore(
                {i: s for i, s in popped.items() if i not in taken and i not in self._held}
            )
        if claimed:
            self._log.warning(
                "a claim's answer was lost, but PostgreSQL had committed it: running its %d jobs",
                len(claimed),
            )
        return claimed

    async def _worker(
        self,
        jobs_recv: trio.MemoryReceiveChannel[Job],
        out_send: trio.MemorySendChannel[Outcome],
    ) -> None:
        self._progress.serve_here()  # for this task's runs, not per job
        async with jobs_recv, out_send:
            while await self._run_jobs(jobs_recv, out_send):
                pass

    async def _run_jobs(
        self,
        jobs_recv: trio.MemoryReceiveChannel[Job],
        out_send: trio.MemorySendChannel[Outcome],
    ) -> bool:
        """Run jobs one after another under one cancel scope, until the channel ends
        (returns False) or the scope is cancelled (returns True: call again).

        The scope's deadline is the running job's timeout (set at once, or by
        `_arm_deadlines`) and is infinite between jobs; shutdown cancels it. Entering and
        leaving a fresh scope per job cost about as much as the rest of dispatching it, so
        a scope is replaced only once cancelled.
        """
        # Made after cancel_jobs() ran, this scope is not cancelled: the _cancelling
        # check below turns whatever jobs are still handed out into requeues.
        scope = trio.CancelScope()
        self._job_scopes.add(scope)
        job: Job | None = None
        started = 0.0
        # The hooks that started the running job's span end it, even if the pool's
        # change meanwhile (a tracer provider set while it ran).
        trace = self._tracing
        try:
            with scope:
                while True:
                    try:
                        job = await jobs_recv.receive()
                    except trio.EndOfChannel:
                        return False
                    if self._cancelling:
                        outcome = Outcome(Kind.REQUEUE, job, 0.0)
                    else:
                        started = trio.current_time()
                        if job.job_timeout > 2 * ARM_PERIOD:
                            self._unarmed[scope] = started + job.job_timeout
                        else:
                            scope.deadline = started + job.job_timeout
                        trace = self._tracing
                        trace.run_started(job)  # the `otel` extra: the run's span
                        error: BaseException | None = None
                        value = None
                        self._run_scopes[job.id] = scope  # what cancel_running cancels
                        try:
                            value = await self._registry.execute(job, self._threads, self._progress)
                        except BaseException as exc:
                            # SystemExit from a library's sys.exit(), KeyboardInterrupt or
                            # GeneratorExit raised by the handler's code are its failure
                            # too; only trio's cancellation (timeout, shutdown) is ours.
                            if is_cancellation(exc):
                                raise
                            error = exc
                        # No checkpoint since the handler returned: the deadline cannot
                        # have cancelled anything in between.
                        if self._unarmed.pop(scope, None) is None:
                            scope.deadline = math.inf
                        self._run_scopes.pop(job.id, None)
                        duration = trio.current_time() - started
                        snooze = None if error is None else snooze_of(error)
                        if snooze is not None:
                            outcome = await self._snoozed(job, duration, snooze)
                        else:
                            outcome = self._finished(job, duration, error, value)
                    await self._send_outcome(out_send, outcome, trace)
                    job = None
        except trio.Cancelled:
            # serve() itself is being cancelled: put a running job back before letting go.
            if job is not None:
                self._slots.release()
                self._give_up_after(CLEANUP_LIMIT)
                with trio.CancelScope(shield=True):
                    await self._record([Outcome(Kind.REQUEUE, job, trio.current_time() - started)])
            raise
        finally:
            self._job_scopes.discard(scope)
            self._unarmed.pop(scope, None)
            if job is not None:
                self._run_scopes.pop(job.id, None)
        # Our scope was cancelled: by the running job's deadline, or by shutdown (then the
        # deadline had not passed yet), or because the row is no longer ours (cancelled,
        # rescued: see `_stopped`). Between jobs, nothing was running.
        if job is not None:
            duration = trio.current_time() - started
            if job.id in self._lost:
                outcome = self._stopped(job, duration)
            elif self._cancelling and trio.current_time() < started + job.job_timeout:
                outcome = Outcome(Kind.REQUEUE, job, duration)
            else:
                outcome = self._failed(
                    job, duration, timeout_message(job.job_timeout), outcome="timed_out"
                )
            await self._send_outcome(out_send, outcome, trace)
        return True

    async def _arm_deadlines(self) -> None:
        """Every `ARM_PERIOD`, set on its cancel scope the deadline of each job that
        started since the last pass (runs until cancelled).

        Setting and clearing a scope's deadline costs about 4 µs per job, as much as a
        tenth of the rest of dispatching it, and most jobs finish long before their
        timeout. So a job whose timeout is over twice `ARM_PERIOD` starts without one,
        and gets it here, exactly as it would have been, well before it can pass: a
        job's timeout is enforced to the same instant, and one that ends sooner never
        touches the deadline. Shorter timeouts are set when the job starts."""
        while True:
            await trio.sleep(ARM_PERIOD)
            unarmed, self._unarmed = self._unarmed, {}
            for scope, deadline in unarmed.items():
                scope.deadline = deadline

    async def _send_outcome(
        self, out_send: trio.MemorySendChannel[Outcome], outcome: Outcome, trace: _tracing.Tracing
    ) -> None:
        """Hand the outcome to the completer (no checkpoint), or write it here if the
        completer is gone (serve() is being cancelled)."""
        trace.run_ended(outcome)  # ends the run's span (the `otel` extra)
        try:
            out_send.send_nowait(outcome)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            with trio.CancelScope(shield=True):
                await self._record([outcome])
        finally:
            self._slots.release()

    def _finished(
        self, job: Job, duration: float, error: BaseException | None, value: object = None
    ) -> Outcome:
        if error is not None:
            return self._failed(job, duration, error_message(error), format_traceback(error))
        if value is None:
            return Outcome(Kind.COMPLETE, job, duration)
        try:
            result = encode_result(value, self._config.max_result_bytes)
        except ValueError as exc:
            return self._result_refused(job, duration, str(exc))
        return Outcome(Kind.COMPLETE, job, duration, result=result)

    async def _snoozed(self, job: Job, duration: float, snooze: Snooze) -> Outcome:
        """The handler raised `Snooze`: back to scheduled, unless its handler's
        ``max_snoozes`` is spent (then the run is a failure like any other)."""
        spec = self._registry.handlers.get(job.job_type)
        limit = spec.max_snoozes if spec is not None else None
        if limit is not None and await self._snoozes_of(job) >= limit:
            return self._failed(job, duration, snooze_limit_message(limit))
        failure = decide_snooze(job, snooze.seconds, self._clock.now())
        return Outcome(Kind.FAIL, job, duration, failure)

    async def _snoozes_of(self, job: Job) -> int:
        """How many times the job snoozed before this run, read from its attempt history
        (only asked of handlers with ``max_snoozes``, so the hot path pays nothing).
        Waits out an outage as recording does: the job heartbeats on meanwhile, and a
        shutdown cancels the wait (the run is then requeued)."""
        while True:
            try:
                stored = await self._store.get_job(job.id)
            except KyuConnectionError as exc:
                await self._record_outage.wait(exc)
            else:
                self._record_outage.recovered()
                break
        if stored is None:
            return 0
        return sum(1 for a in stored.attempts if a.outcome == "snoozed")

    def _handler_delay(self, job: Job) -> float | None:
        """The delay before the job's retry from its handler's ``backoff``, or None for
        the queue's policy: no backoff, no retry left, or a backoff that raised or
        returned no valid number of seconds (a bug that must not cost the job its retry;
        logged as an error, with the queue's policy used instead)."""
        spec = self._registry.handlers.get(job.job_type)
        if spec is None or spec.backoff is None or job.retry_count >= job.max_retries:
            return None
        attempt = job.retry_count + 1
        try:
            return backoff_seconds(spec.backoff(attempt))
        except Exception as exc:  # user code: any error is its bug, reported below
            self._log.error(
                "job %s: the backoff of job type %r failed for attempt %d (%s); "
                "using the queue's retry policy instead",
                job.id,
                job.job_type,
                attempt,
                one_line(error_message(exc)),
                exc_info=exc,
            )
            return None

    def _result_refused(self, job: Job, duration: float, reason: str) -> Outcome:
        """The handler returned a value that cannot be stored. The job is dead at once,
        with the reason as its error: a retry would run the handler's side effects again
        and, most often, return the same value; `retry_job` runs it again once fixed."""
        message = result_error_message(reason)
        failure = Failure(Lease(job.id, job.attempt), JobStatus.DEAD, message)
        return Outcome(Kind.FAIL, job, duration, failure)

    def _failed(
        self,
        job: Job,
        duration: float,
        message: str,
        traceback: str | None = None,
        *,
        outcome: str | None = None,
    ) -> Outcome:
        failure = decide_failure(
            job,
            message,
            self._clock.now(),
            self._policy,
            outcome=outcome,
            traceback=traceback,
            delay=self._handler_delay(job),
        )
        return Outcome(Kind.FAIL, job, duration, failure, traceback)

    async def _completer(
        self, out_recv: trio.MemoryReceiveChannel[Outcome], all_written: trio.Event
    ) -> None:
        async with out_recv:
            while True:
                try:
                    batch = [await out_recv.receive()]
                except trio.EndOfChannel:
                    all_written.set()
                    return
                except trio.Cancelled:
                    # serve() is being cancelled or a task crashed: write what is waiting,
                    # including what workers hand over while we write, then close the
                    # channel with no checkpoint in between, so that a later outcome finds
                    # it closed and its worker writes it itself.
                    self._give_up_after(CLEANUP_LIMIT)
                    with trio.CancelScope(shield=True):
                        while batch := self._drain_nowait(out_recv, []):
                            await self._record(batch)
                        out_recv.close()
                    raise
                # A partly written batch would be unknowable, so each flush is shielded.
                with trio.CancelScope(shield=True):
                    await self._record(self._drain_nowait(out_recv, batch))

    @staticmethod
    def _drain_nowait(
        out_recv: trio.MemoryReceiveChannel[Outcome], batch: list[Outcome]
    ) -> list[Outcome]:
        while len(batch) < MAX_BATCH:
            try:
                batch.append(out_recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch

    async def _record(self, outcomes: list[Outcome]) -> None:
        """Write outcomes, one statement per kind. Must run shielded.

        Retries through an outage for as long as it lasts: the process is alive, so its
        jobs keep their heartbeat and are not rescued. Only once shutdown has set the
        give-up time does it stop trying; the reaper then rescues those jobs."""
        if not outcomes:
            return
        unwritten: dict[Kind, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            unwritten[outcome.kind].append(outcome)
        unanswered = False
        with self._until_give_up():
            # A job that shows its outcome shows its last progress too.
            await self._progress.flush_ended(o.job.id for o in outcomes)
            while unwritten:
                unanswered = True
                try:
                    await self._write(unwritten)
                except KyuConnectionError as exc:
                    unanswered = False
                    await self._record_outage.wait(exc)
                else:
                    self._record_outage.recovered()
        if unwritten:
            count = sum(len(o) for o in unwritten.values())
            if unanswered:
                self._log.error(
                    "shutting down: PostgreSQL did not answer a write of %d outcomes in time; "
                    "they may or may not be recorded, and the reaper rescues any job whose "
                    "outcome is not",
                    count,
                )
            else:
                self._log.error(
                    "shutting down: could not record %d outcomes (PostgreSQL unreachable); "
                    "the reaper rescues their jobs",
                    count,
                )
        for outcome in outcomes:
            self._held.pop(outcome.job.id, None)
            if self.recorded is not None and outcome.job.id in self._written:
                self._written.discard(outcome.job.id)
                self.recorded.append(outcome)
        finished = [
            o.job.id
            for o in outcomes
            if o.kind is Kind.COMPLETE
            or (o.failure is not None and o.failure.status is JobStatus.DEAD)
        ]
        if finished:
            await self._announce(finished)
        await self._gate.released(o.job.job_type for o in outcomes)

    #: Until when announcing is off after Redis failed to answer one (trio time).
    _announce_quiet_until: float = -math.inf

    async def _announce(self, ids: list[str]) -> None:
        """Tell `result()` waiters that these jobs are final, only if some process waits
        (asked at most once a second: without waiters this costs nothing per batch). An
        id whose write was fenced off costs a waiter a lookup, never a wrong answer.

        Recording outcomes must not wait on Redis: an announcement that fails or takes
        longer than `ANNOUNCE_LIMIT` turns announcing off for `ANNOUNCE_PAUSE` seconds,
        during which waiters find the results by their poll."""
        if trio.current_time() < self._announce_quiet_until:
            return
        failed: KyuError | None = None
        with trio.move_on_after(ANNOUNCE_LIMIT) as scope:
            try:
                if await self._broker.has_waiters(self._queue):
                    await self._broker.publish_finished(self._queue, ids)
            except KyuError as exc:
                failed = exc
        if failed is not None or scope.cancelled_caught:
            self._announce_quiet_until = trio.current_time() + ANNOUNCE_PAUSE
            # The fetcher's outage log already says when Redis is away.
            self._log.debug(
                "could not announce %d finished jobs (%s); retrying in %.0fs",
                len(ids),
                failed or "Redis did not answer in time",
                ANNOUNCE_PAUSE,
            )

    async def _write(self, unwritten: dict[Kind, list[Outcome]]) -> None:
        """Write each kind of outcome; an outcome leaves ``unwritten`` once written, so a
        retry after a lost connection writes exactly what is still missing."""
        for kind in (Kind.COMPLETE, Kind.FAIL, Kind.REQUEUE):
            if kind in unwritten:
                await self._write_kind(kind, unwritten[kind])
                del unwritten[kind]

    async def _write_kind(self, kind: Kind, outcomes: list[Outcome]) -> None:
        """Write ``outcomes`` (emptying the list) in one statement. An outcome the database
        refuses must not keep the others of its batch unwritten: on such an error they are
        written one by one, and the refused one is dealt with on its own."""
        try:
            await self._write_batch(kind, outcomes)
        except KyuConnectionError:
            raise
        except (KyuError, ValueError) as exc:  # the database refused it (not a bug of ours)
            if len(outcomes) == 1:
                await self._write_refused(outcomes[0], exc)
            else:
                while outcomes:
                    await self._write_kind(kind, [outcomes[0]])
                    del outcomes[0]
        outcomes.clear()

    async def _write_refused(self, outcome: Outcome, exc: KyuError | ValueError) -> None:
        job = outcome.job
        if outcome.kind is Kind.COMPLETE and outcome.result is not None:
            # PostgreSQL refused the result (jsonb is stricter than Python's json in rare
            # cases): the job must not stay running until the reaper rescues it.
            self._log.error(
                "job %s: PostgreSQL refused its result (%s); recording the job dead",
                job.id,
                one_line(error_message(exc)),
            )
            refused = self._result_refused(
                job, outcome.duration, f"PostgreSQL refused the result: {error_message(exc)}"
            )
            await self._write_kind(Kind.FAIL, [refused])
            return
        if outcome.failure is not None and outcome.failure.error_message != UNSTORABLE_MESSAGE:
            failure = attrs.evolve(
                outcome.failure, error_message=UNSTORABLE_MESSAGE, traceback=None
            )
            self._log.error(
                "job %s: PostgreSQL refused its error message (%s); storing a placeholder",
                job.id,
                one_line(error_message(exc)),
            )
            await self._write_kind(Kind.FAIL, [attrs.evolve(outcome, failure=failure)])
            return
        # Not a fault of this process's connection, and not ours to retry forever: leave
        # the job to the reaper (its lease lapses) and say so loudly.
        self._log.error(
            "job %s: PostgreSQL refused its outcome (%s); the reaper will rescue it",
            job.id,
            outcome.kind.value,
            exc_info=exc,
        )

    async def _write_batch(self, kind: Kind, outcomes: list[Outcome]) -> None:
        now = self._clock.now()
        leases = [o.lease for o in outcomes]
        if kind is Kind.COMPLETE:
            results = [o.result for o in outcomes]
            if any(r is not None for r in results):
                written = await self._store.complete_jobs(leases, self._worker_id, now, results)
            else:  # the call a store written before results existed also takes
                written = await self._store.complete_jobs(leases, self._worker_id, now)
            await self._learn_cancelled(outcomes, written)
            for o in outcomes:
                self._log_outcome(o, "completed", logging.DEBUG)
        elif kind is Kind.FAIL:
            failures: list[Failure] = [o.failure for o in outcomes if o.failure is not None]
            written = await self._store.fail_jobs(failures, self._worker_id, now)
            await self._learn_cancelled(outcomes, written)
            for o in outcomes:
                assert o.failure is not None
                if o.failure.status is JobStatus.DEAD:
                    self._log_outcome(o, "dead", logging.ERROR)
                elif o.failure.status is JobStatus.SCHEDULED:
                    self._log_outcome(o, "snoozed", logging.INFO)
                else:
                    self._log_outcome(o, "failed", logging.WARNING)
        else:
            ready = await self._store.requeue_jobs(leases, self._worker_id, now)
            written = [r.id for r in ready]
            await self._learn_cancelled(outcomes, written)
            for o in outcomes:
                self._log_outcome(o, "requeued", logging.WARNING)
            await self._ctx.push_or_log(ready)
        if self.recorded is not None:
            # Only what the fenced write took: a run whose lease was lost is not ours.
            self._written.update(written)

    @property
    def running(self) -> int:
        """Jobs claimed by this pool whose outcome is not written yet."""
        return len(self._held)

    def _log_outcome(self, outcome: Outcome, event: str, level: int) -> None:
        if self._lost and outcome.job.id in self._lost:
            if not self._lost_run(outcome):
                return
            event, level = "cancelled", logging.INFO
        self._metrics.finished(outcome.job.job_type, event, outcome.duration)
        if not self._log.isEnabledFor(level):
            return
        job = outcome.job
        extra = {
            "job_id": job.id,
            "job_type": job.job_type,
            "attempt": job.attempt,
            "duration": round(outcome.duration, 6),
            "kyu_event": event,
        }
        error = ""
        if outcome.failure is not None:
            extra["error"] = outcome.failure.error_message
            # User text: escaped, so that it cannot forge log lines.
            error = ": " + one_line(outcome.failure.error_message)
        # Payloads often hold personal data: only with Config.log_payloads=True.
        payload = ""
        if self._config.log_payloads:
            extra["payload"] = job.payload
            payload = f" payload={shown(job.payload, 200)}"
        # A failed run's traceback, so that its cause is found without reproducing it;
        # every line indented and escaped (the message in it is user text).
        traceback = ""
        if outcome.traceback is not None:
            extra["traceback"] = outcome.traceback
            traceback = "\n" + indented_block(outcome.traceback)
        self._log.log(
            level,
            "job %s %s (type=%s attempt=%d %.3fs)%s%s%s",
            job.id,
            event,
            job.job_type,
            job.attempt,
            outcome.duration,
            payload,
            error,
            traceback,
            extra=extra,
        )

    async def _heartbeat(self) -> None:
        outage = Outage(self._log, f"worker {self._worker_id} heartbeat", cap=5.0)
        while True:
            await trio.sleep(self._config.heartbeat_interval)
            if not self._held:
                continue
            leases = [Lease(job.id, job.attempt) for job in self._held.values()]
            try:
                lost = await self._store.heartbeat(leases, self._worker_id, self._clock.now())
                outage.recovered()
                self._stop_lost_runs(lost)
            except KyuConnectionError as exc:
                outage.failed(exc)

    # ---- cancelling running jobs (issue 14) ----------------------------------------

    def cancel_running(self, job_id: str) -> None:
        """`cancel_job` cancelled this job while it ran (its notification arrived): if a
        handler of this pool runs it, cancel that handler's scope now. Nothing is written:
        the row says ``cancelled`` already, and the run's own outcome write is fenced off
        (see `_learn_cancelled` for a job whose handler had just returned). Other ids are
        ignored: every process of the queue hears of every cancel."""
        scope = self._run_scopes.get(job_id)
        if scope is not None:
            self._lost[job_id] = JobStatus.CANCELLED.value
            scope.cancel()

    def _stop_lost_runs(self, lost: dict[str, JobStatus | None]) -> None:
        """The heartbeat found leases this pool no longer holds: cancelled (and the
        notification was lost) or rescued by the reaper. A handler still running on one
        is cancelled; one that has returned is left alone: its write is fenced off."""
        for job_id, status in lost.items():
            scope = self._run_scopes.get(job_id)
            if scope is None:
                continue
            self._lost[job_id] = "deleted" if status is None else status.value
            scope.cancel()

    async def _learn_cancelled(self, outcomes: list[Outcome], written: list[str]) -> None:
        """Some outcomes' fenced write wrote nothing: find out which of those jobs were
        cancelled (a cancel that won the race against the run's own write, before its
        notification arrived), so that they are logged and counted as cancelled. A read
        only when a write was fenced off, which almost never happens; best effort."""
        if len(written) == len(outcomes):
            return
        taken = set(written)
        unknown = [
            o.job.id for o in outcomes if o.job.id not in taken and o.job.id not in self._lost
        ]
        if not unknown:
            return
        jobs: list[Job] = []
        with trio.move_on_after(ANNOUNCE_LIMIT), contextlib.suppress(KyuError):
            jobs = await self._store.get_jobs(unknown)
        for job in jobs:
            if job.status is JobStatus.CANCELLED:
                self._lost[job.id] = job.status.value

    def _stopped(self, job: Job, duration: float) -> Outcome:
        """The outcome of a run stopped because its row is no longer ours. Its write is
        fenced off and writes nothing (the row says what happened); it goes through the
        completer all the same, which logs it and lets go of the job. A cancelled run
        says so (for the log, metrics and tracing); any other is handed back."""
        if self._lost[job.id] != JobStatus.CANCELLED.value:
            return Outcome(Kind.REQUEUE, job, duration)
        message = "Cancelled: cancelled while running"
        lease = Lease(job.id, job.attempt)
        stopped = Failure(lease, JobStatus.CANCELLED, message, outcome="cancelled")
        return Outcome(Kind.FAIL, job, duration, stopped)

    def _lost_run(self, outcome: Outcome) -> bool:
        """A run whose row was no longer ours ended: True if it was cancelled (the caller
        logs and counts it so), else say here what happened to it."""
        status = self._lost.pop(outcome.job.id)
        if status == JobStatus.CANCELLED.value:
            return True
        self._log.warning(
            "job %s: this worker no longer held it (it is %s now: rescued by the reaper "
            "after missed heartbeats, or deleted), so its run was stopped",
            outcome.job.id,
            status,
            extra={
                "job_id": outcome.job.id,
                "job_type": outcome.job.job_type,
                "kyu_event": "lost",
            },
        )
        return False
