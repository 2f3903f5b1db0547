"""`RunSummary`: what one `Queue.run_once` call did."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .._job import Job, JobStatus
from ._outcomes import Kind, Outcome


@attrs.frozen
class RunSummary:
    """What one `Queue.run_once` call did.

    ``ran``: the jobs whose run finished and was recorded in this call, in the order
    they finished, each as it was when claimed (status ``running``); ``completed``,
    ``failed`` (a retry is due later), ``dead`` and ``snoozed`` (the handler raised
    `Snooze`) count them by outcome, so they add up to ``len(ran)``. ``requeued``: runs
    cut short by a cancellation and put back without spending a retry. ``promoted``: due
    scheduled jobs and retries the scheduler pass made ready. ``rescued``: jobs the reaper
    pass took back from lost workers (each then failed with a retry due, or dead).

    Example::

        summary = await queue.run_once()
        print(f"{len(summary.ran)} runs: {summary.completed} completed, "
              f"{summary.failed} failed, {summary.dead} dead")
    """

    ran: tuple[Job, ...] = ()
    completed: int = 0
    failed: int = 0
    dead: int = 0
    requeued: int = 0
    promoted: int = 0
    rescued: int = 0
    snoozed: int = 0


def summarize(recorded: Iterable[Outcome], *, promoted: int, rescued: int) -> RunSummary:
    """The summary of the outcomes a draining pool recorded, in order."""
    ran: list[Job] = []
    counts = {"completed": 0, "failed": 0, "dead": 0, "requeued": 0, "snoozed": 0}
    for outcome in recorded:
        if outcome.kind is Kind.REQUEUE:
            counts["requeued"] += 1
            continue
        ran.append(outcome.job)
        if outcome.kind is Kind.COMPLETE:
            counts["completed"] += 1
        elif outcome.failure is not None and outcome.failure.status is JobStatus.DEAD:
            counts["dead"] += 1
        elif outcome.failure is not None and outcome.failure.status is JobStatus.SCHEDULED:
            counts["snoozed"] += 1
        else:
            counts["failed"] += 1
    return RunSummary(ran=tuple(ran), promoted=promoted, rescued=rescued, **counts)
