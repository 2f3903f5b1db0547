"""The worker pool: one fetcher, N workers, one completer and one heartbeat per process.

    broker --pop--> fetcher --claim--> [jobs channel] --> workers --> [outcomes] --> completer
                                                                                    (batched writes)

The fetcher never claims more jobs than there are idle workers, so a claimed job starts
at once; the completer writes whatever outcomes have piled up in one statement per
kind. Every write after the claim is fenced by the claim's lease (worker id + attempt).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict

import attrs
import trio

from .._clock import Clock
from .._config import Config
from .._errors import KyuConnectionError
from .._job import Job, JobStatus
from .._ports import Broker, Lease, Store
from .._retry import RetryPolicy
from ._handlers import Registry
from ._metrics import Metrics
from ._outage import Outage
from ._outcomes import Kind, Outcome, decide_failure, error_message, timeout_message

#: How long an idle fetcher blocks in one pop; bounds how late it notices a shutdown.
POP_WAIT = 1.0
#: Concurrent fetchers per process.
FETCHERS = 2
#: Most outcomes written in one statement.
MAX_BATCH = 500
#: How long a shielded cleanup write may take before we give up on it (the reaper then
#: rescues the job).
CLEANUP_LIMIT = 15.0


@attrs.define
class PoolStats:
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    dead: int = 0
    requeued: int = 0


class WorkerPool:
    """Runs jobs of one queue until stopped (``drain=False``) or until the broker has no
    ready job left (``drain=True``, for `Queue.run_once`)."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        broker: Broker,
        clock: Clock,
        registry: Registry,
        worker_id: str,
        drain: bool,
        logger: logging.Logger,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._queue = config.queue_name
        self._store = store
        self._broker = broker
        self._clock = clock
        self._registry = registry
        self._worker_id = worker_id
        self._drain = drain
        self._log = logger
        self._policy = RetryPolicy(config.max_backoff, config.retry_jitter)
        self._slots = trio.Semaphore(config.workers)
        self._held: dict[str, Lease] = {}  # claimed and not yet recorded: heartbeat these
        self._job_scopes: set[trio.CancelScope] = set()
        self._fetch_scopes: list[trio.CancelScope] = []
        self._stopping = False
        self._workers_done = trio.Event()
        self._record_outage = Outage(logger, f"worker {worker_id} recording outcomes", cap=2.0)
        self._cancelling = False
        self.stats = PoolStats()

    # ---- control -------------------------------------------------------------------

    def stop_fetching(self) -> None:
        """Take no new jobs; jobs already claimed run on."""
        self._stopping = True
        for scope in self._fetch_scopes:
            scope.cancel()

    def cancel_jobs(self) -> None:
        """Cancel every running job now; each goes back to pending without spending a retry."""
        self.stop_fetching()
        self._cancelling = True
        for scope in list(self._job_scopes):
            scope.cancel()

    async def shutdown(self, grace: float) -> None:
        """Graceful stop: no new jobs, ``grace`` seconds for running ones, then cancel them."""
        self.stop_fetching()
        with trio.move_on_after(grace):
            await self._workers_done.wait()
        self.cancel_jobs()

    # ---- the tasks -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        jobs_send, jobs_recv = trio.open_memory_channel[Job](self._config.workers)
        out_send, out_recv = trio.open_memory_channel[Outcome](math.inf)
        async with trio.open_nursery() as outer:
            outer.start_soon(self._heartbeat)
            outer.start_soon(self._completer, out_recv, outer.cancel_scope)
            async with out_send, jobs_recv:
                try:
                    async with trio.open_nursery() as workers, jobs_send:
                        for _ in range(self._config.workers):
                            workers.start_soon(self._worker, jobs_recv.clone(), out_send.clone())
                        # Two fetchers keep a pop+claim round trip in flight while the
                        # other hands jobs out; slots still bound what both claim.
                        for _ in range(FETCHERS):
                            workers.start_soon(self._fetcher, jobs_send.clone())
                        task_status.started()
                finally:
                    self._workers_done.set()
                    # Claimed jobs still waiting in the channel when the workers were
                    # cancelled never started: put them back.
                    leftovers = []
                    while True:
                        try:
                            leftovers.append(jobs_recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                            break
                    if leftovers:
                        with trio.CancelScope(shield=True):
                            await self._record([Outcome(Kind.REQUEUE, j, 0.0) for j in leftovers])

    async def _take_slots(self) -> int:
        await self._slots.acquire()
        taken = 1
        # Workers finishing in the same scheduling rounds release their slots during these
        # checkpoints: gather until a round frees none, so that one claim serves all of
        # them instead of one small claim each (a claim costs a round trip and a thread
        # hop however many rows it takes).
        while taken < MAX_BATCH:
            await trio.lowlevel.checkpoint()
            gained = 0
            while taken < MAX_BATCH:
                try:
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    break
                taken += 1
                gained += 1
            if not gained:
                break
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
                while True:
                    free = await self._take_slots()
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
                    # after a failed claim is not: shutdown must not wait for it).
                    try:
                        with trio.CancelScope(shield=True):
                            claimed = await self._claim_popped(popped)
                            for job in claimed:
                                self._held[job.id] = Lease(job.id, job.attempt)
                                jobs_send.send_nowait(job)  # room is guaranteed by the slots
                    except KyuConnectionError as exc:
                        self._release_slots(free)
                        await outage.wait(exc)
                        continue
                    outage.recovered()
                    self._release_slots(free - len(claimed))

    async def _claim_popped(self, popped: dict[str, float]) -> list[Job]:
        if not popped:
            return []
        if self._stopping:
            # Shutdown began while we were waiting in the pop: hand the ids back untouched.
            await self._restore(popped)
            return []
        return await self._claim(popped)

    async def _restore(self, popped: dict[str, float]) -> None:
        # If even this fails, the reaper's sweep pushes pending rows the broker lacks.
        with contextlib.suppress(KyuConnectionError):
            await self._broker.restore(self._queue, popped)

    async def _claim(self, popped: dict[str, float]) -> list[Job]:
        try:
            claimed = await self._store.claim_jobs(
                self._queue, list(popped), self._worker_id, self._clock.now()
            )
        except KyuConnectionError:
            # The store is away: give the ids back to the broker so nothing waits for the
            # reaper's sweep; the fetcher backs off before its next pop.
            await self._restore(popped)
            raise
        self.stats.claimed += len(claimed)
        if self._metrics is not None:
            now = self._clock.now()
            for job in claimed:
                self._metrics.started(job.job_type, (now - job.scheduled_at).total_seconds())
        if self._log.isEnabledFor(logging.DEBUG):
            for job in claimed:
                self._log.debug(
                    "job %s claimed (type=%s attempt=%d)", job.id, job.job_type, job.attempt,
                    extra={"job_id": job.id, "job_type": job.job_type, "attempt": job.attempt,
                           "kyu_event": "claimed"},
                )
        return claimed

    async def _worker(
        self,
        jobs_recv: trio.MemoryReceiveChannel[Job],
        out_send: trio.MemorySendChannel[Outcome],
    ) -> None:
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

        The scope's deadline is the running job's timeout and is infinite between jobs;
        shutdown cancels it. Entering and leaving a fresh scope per job cost about as much
        as the rest of dispatching it, so a scope is replaced only once cancelled.
        """
        # Made after cancel_jobs() ran, this scope is not cancelled: the _cancelling
        # check below turns whatever jobs are still handed out into requeues.
        scope = trio.CancelScope()
        self._job_scopes.add(scope)
        job: Job | None = None
        started = 0.0
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
                        scope.deadline = started + job.job_timeout
                        error: Exception | None = None
                        try:
                            await self._registry.execute(job)
                        except Exception as exc:
                            error = exc
                        # No checkpoint since the handler returned: the deadline cannot
                        # have cancelled anything in between.
                        scope.deadline = math.inf
                        outcome = self._finished(job, trio.current_time() - started, error)
                    await self._send_outcome(out_send, outcome)
                    job = None
        except trio.Cancelled:
            # serve() itself is being cancelled: put a running job back before letting go.
            if job is not None:
                self._slots.release()
                with trio.CancelScope(shield=True):
                    await self._record(
                        [Outcome(Kind.REQUEUE, job, trio.current_time() - started)]
                    )
            raise
        finally:
            self._job_scopes.discard(scope)
        # Our scope was cancelled: by the running job's deadline, or by shutdown (then the
        # deadline had not passed yet). Between jobs, nothing was running.
        if job is not None:
            duration = trio.current_time() - started
            if self._cancelling and trio.current_time() < scope.deadline:
                outcome = Outcome(Kind.REQUEUE, job, duration)
            else:
                outcome = self._failed(job, duration, timeout_message(job.job_timeout))
            await self._send_outcome(out_send, outcome)
        return True

    async def _send_outcome(
        self, out_send: trio.MemorySendChannel[Outcome], outcome: Outcome
    ) -> None:
        """Hand the outcome to the completer (no checkpoint), or write it here if the
        completer is gone (serve() is being cancelled)."""
        try:
            out_send.send_nowait(outcome)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            with trio.CancelScope(shield=True):
                await self._record([outcome])
        finally:
            self._slots.release()

    def _finished(self, job: Job, duration: float, error: Exception | None) -> Outcome:
        if error is None:
            return Outcome(Kind.COMPLETE, job, duration)
        return self._failed(job, duration, error_message(error))

    def _failed(self, job: Job, duration: float, message: str) -> Outcome:
        failure = decide_failure(job, message, self._clock.now(), self._policy)
        return Outcome(Kind.FAIL, job, duration, failure)

    async def _completer(
        self, out_recv: trio.MemoryReceiveChannel[Outcome], done: trio.CancelScope
    ) -> None:
        async with out_recv:
            while True:
                try:
                    batch = [await out_recv.receive()]
                except trio.EndOfChannel:
                    done.cancel()  # every outcome is written: the heartbeat can stop
                    return
                except trio.Cancelled:
                    # serve() is being cancelled: write what is already waiting, then go.
                    with trio.CancelScope(shield=True):
                        await self._record(self._drain_nowait(out_recv, []))
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
        """Write outcomes, one statement per kind. Must run shielded. Retries through a
        short outage; past ``CLEANUP_LIMIT`` it gives the jobs up to the reaper."""
        if not outcomes:
            return
        by_kind: dict[Kind, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            by_kind[outcome.kind].append(outcome)
        with trio.move_on_after(CLEANUP_LIMIT) as limit:
            while True:
                try:
                    await self._write(by_kind)
                    self._record_outage.recovered()
                    break
                except KyuConnectionError as exc:
                    await self._record_outage.wait(exc)
        if limit.cancelled_caught:
            self._log.error(
                "gave up recording %d outcomes; the reaper will rescue their jobs",
                len(outcomes),
            )
        for outcome in outcomes:
            self._held.pop(outcome.job.id, None)

    async def _write(self, by_kind: dict[Kind, list[Outcome]]) -> None:
        """Write each kind of outcome; a kind leaves ``by_kind`` only once it is written,
        so a retry after a failed write writes exactly what is still missing."""
        now = self._clock.now()
        if done := by_kind.get(Kind.COMPLETE):
            await self._store.complete_jobs([o.lease for o in done], self._worker_id, now)
            del by_kind[Kind.COMPLETE]
            self.stats.completed += len(done)
            for o in done:
                self._log_outcome(o, "completed", logging.DEBUG)
        if failed := by_kind.get(Kind.FAIL):
            failures = [o.failure for o in failed if o.failure is not None]
            await self._store.fail_jobs(failures, self._worker_id, now)
            del by_kind[Kind.FAIL]
            for o in failed:
                assert o.failure is not None
                if o.failure.status is JobStatus.DEAD:
                    self.stats.dead += 1
                    self._log_outcome(o, "dead", logging.ERROR)
                else:
                    self.stats.failed += 1
                    self._log_outcome(o, "failed", logging.WARNING)
        if requeue := by_kind.get(Kind.REQUEUE):
            ready = await self._store.requeue_jobs(
                [o.lease for o in requeue], self._worker_id, now
            )
            del by_kind[Kind.REQUEUE]
            self.stats.requeued += len(requeue)
            for o in requeue:
                self._log_outcome(o, "requeued", logging.WARNING)
            try:
                await self._broker.push(self._queue, ready)
            except KyuConnectionError as exc:
                self._log.warning("could not push %d requeued jobs (%s); the resync "
                                  "sweep will", len(ready), exc)

    @property
    def running(self) -> int:
        """Jobs claimed by this pool whose outcome is not written yet."""
        return len(self._held)

    def _log_outcome(self, outcome: Outcome, event: str, level: int) -> None:
        if self._metrics is not None:
            self._metrics.finished(outcome.job.job_type, event, outcome.duration)
        if not self._log.isEnabledFor(level):
            return
        job = outcome.job
        extra = {"job_id": job.id, "job_type": job.job_type, "attempt": job.attempt,
                 "duration": round(outcome.duration, 6), "kyu_event": event}
        if outcome.failure is not None:
            extra["error"] = outcome.failure.error_message
        # Payloads often hold personal data: only with Config.log_payloads=True.
        payload = ""
        if self._config.log_payloads:
            extra["payload"] = job.payload
            payload = f" payload={job.payload[:200]!r}"
        self._log.log(
            level, "job %s %s (type=%s attempt=%d %.3fs)%s%s", job.id, event, job.job_type,
            job.attempt, outcome.duration, payload,
            f": {outcome.failure.error_message}" if outcome.failure else "", extra=extra,
        )

    async def _heartbeat(self) -> None:
        outage = Outage(self._log, f"worker {self._worker_id} heartbeat", cap=5.0)
        while True:
            await trio.sleep(self._config.heartbeat_interval)
            if not self._held:
                continue
            try:
                await self._store.heartbeat(
                    list(self._held.values()), self._worker_id, self._clock.now()
                )
                outage.recovered()
            except KyuConnectionError as exc:
                outage.failed(exc)
