"""Prometheus metrics of one `Queue`, in a private registry so several queues in one
process never clash.

Every ``kyu_`` sample carries a ``queue`` label, so one Prometheus can tell queues apart
without joining on ``kyu_info``. Each metric is either counted by this process (what its
workers, scheduler, reaper and producers did) or sampled from the servers (the whole
queue, the same in every process); its HELP text says which. No ``_created`` samples are
exposed: they read like counts, and they are left out without touching prometheus-client's
global settings, which belong to the application.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import attrs
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

UNKNOWN = "unknown"
#: A sample that takes longer than this counts as the servers being down.
SAMPLE_LIMIT = 10.0

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

_V = TypeVar("_V")

_SAMPLED = (
    "sampled every metrics_sample_interval by the process that leads the queue's "
    "maintenance (see kyu_leader), and exported by it alone; absent until a sample succeeds "
    "and after one fails (see kyu_up)"
)

#: The HELP text of every kyu_ metric: what it counts, and where.
HELP = {
    "kyu_jobs_enqueued": (
        "Jobs enqueued by this process (Queue.enqueue and enqueue_many called here); jobs "
        "enqueued by other processes are counted there, not here"
    ),
    "kyu_jobs_processed": (
        "Runs that this process's workers finished and recorded, by outcome: completed; "
        "failed (a retry is scheduled); dead (no retry left, also counting jobs this "
        "process's reaper declared dead); requeued (put back at shutdown without spending "
        "a retry); snoozed (the handler raised Snooze); cancelled (cancel_job cancelled it "
        "while it ran)"
    ),
    "kyu_job_failures": (
        "Runs that this process's workers recorded as failed or dead (the handler raised, "
        "timed out or had no registered handler), by job type"
    ),
    "kyu_jobs_dead": (
        "Jobs that ended dead in this process: runs with no retry left, plus jobs this "
        "process's reaper found on a lost worker at their last try"
    ),
    "kyu_retries": "Failed runs of this process's workers for which a retry was scheduled, "
    "by job type",
    "kyu_job_duration_seconds": (
        "Handler run time of the runs this process's workers finished and recorded, by job "
        "type and outcome"
    ),
    "kyu_job_wait_seconds": (
        "Time from when a job was due (enqueued, scheduled_at or retry time) until this "
        "process's workers claimed it, by job type"
    ),
    "kyu_jobs_running": "Jobs this process's workers have claimed and not yet recorded",
    "kyu_scheduler_promoted": (
        "Due scheduled jobs and retries that this process's scheduler pushed to Redis"
    ),
    "kyu_reaper_rescued": (
        "Jobs this process's reaper took back from lost workers (failed with a retry due "
        "after the usual backoff, or dead when no retry was left)"
    ),
    "kyu_redis_resyncs": (
        "Times this process refilled Redis from PostgreSQL (Redis was new, flushed or "
        "restarted empty)"
    ),
    "kyu_jobs_pruned": (
        "Finished jobs that this process deleted, as the queue's maintenance leader, once "
        "they were older than their retention (Config.retention_completed, "
        "retention_cancelled, retention_dead), by status"
    ),
    "kyu_queue_depth": f"Job ids of the whole queue waiting in Redis; {_SAMPLED}",
    "kyu_queue_lag_seconds": (
        "Age of the whole queue's oldest due job that no worker has started, 0 when none "
        f"waits (PostgreSQL); {_SAMPLED}"
    ),
    "kyu_jobs_by_status": f"Jobs of the whole queue in PostgreSQL, by status; {_SAMPLED}",
    "kyu_queue_paused": f"1 while the queue is paused (Queue.pause), else 0; {_SAMPLED}",
    "kyu_up": (
        "1 when this process's last check (every metrics_sample_interval: the queue-wide "
        f"sample on the leader, a ping elsewhere) reached PostgreSQL and Redis within "
        f"{SAMPLE_LIMIT:g} s, else 0"
    ),
    "kyu_leader": (
        "1 while this process leads the queue's maintenance (promotion of due jobs, "
        "rescue, the Redis sweep, cron, pruning, and the queue-wide samples), else 0; "
        "sum by queue is 1 when all is well"
    ),
    "kyu_info": "Always 1: the kyu-trio version of this process and the queue it serves",
}


class Count:
    """One counter, a plain int: every update happens on the trio thread, so it needs no
    lock (prometheus-client's Counter takes one per update)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class Level:
    """One gauge, read from a function when scraped."""

    __slots__ = ("_read",)

    def __init__(self) -> None:
        self._read: Callable[[], float] = lambda: 0

    def set_function(self, read: Callable[[], float]) -> None:
        self._read = read

    def get(self) -> float:
        return self._read()


@attrs.frozen
class QueueSample:
    """One successful sample of the whole queue (Redis and PostgreSQL)."""

    depth: int
    lag: float
    by_status: dict[str, int]
    paused: bool = False


class _Histogram:
    """Bucket counts of one label set (not cumulative; made cumulative on collection)."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class JobTally:
    """The per-job counters and histograms, kept as plain ints and floats and turned into
    Prometheus samples only when scraped.

    prometheus-client's own Counter and Histogram take a lock and make several calls per
    update, which cost more per job than the job's claim. Every update here happens on
    the trio thread, so no lock is needed; a scrape copies before it reads.
    """

    def __init__(self) -> None:
        self.processed: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.dead = 0
        self.duration: dict[tuple[str, ...], _Histogram] = {}  # (job_type, status)
        self.wait: dict[str, _Histogram] = {}

    def observe_wait(self, job_type: str, seconds: float) -> None:
        h = self.wait.get(job_type)
        if h is None:
            h = self.wait[job_type] = _Histogram(len(_WAIT_BUCKETS) + 1)
        h.counts[bisect.bisect_left(_WAIT_BUCKETS, seconds)] += 1
        h.sum += seconds

    def finished(self, job_type: str, status: str, duration: float) -> None:
        self.processed[status] = self.processed.get(status, 0) + 1
        key = (job_type, status)
        h = self.duration.get(key)
        if h is None:
            h = self.duration[key] = _Histogram(len(_DURATION_BUCKETS) + 1)
        h.counts[bisect.bisect_left(_DURATION_BUCKETS, duration)] += 1
        h.sum += duration
        if status in ("failed", "dead"):
            self.failures[job_type] = self.failures.get(job_type, 0) + 1
        if status == "failed":
            self.retries[job_type] = self.retries.get(job_type, 0) + 1
        elif status == "dead":
            self.dead += 1

    def lost(self, dead: int) -> None:
        self.processed["dead"] = self.processed.get("dead", 0) + dead
        self.dead += dead


class Metrics:
    """Every metric kyu-trio exports, for one queue. ``is_known`` bounds the ``job_type``
    label: types without a registered handler are reported as ``unknown``.

    Counted in this process: ``jobs_total`` (kyu_jobs_enqueued), ``tally``, ``running``,
    ``promoted``, ``rescued``, ``resyncs``. Sampled from the servers by `Sampler`:
    ``sample`` (None until a sample succeeds, and again after one fails).
    """

    def __init__(self, queue: str, version: str, is_known: Callable[[str], bool]) -> None:
        self.queue = queue
        self.version = version
        self._is_known = is_known
        self._labels: dict[str, str] = {}
        self.jobs_total = Count()
        self.tally = JobTally()
        self.running = Level()
        self.leader = Level()
        self.promoted = Count()
        self.rescued = Count()
        self.resyncs = Count()
        #: Finished jobs the pruner deleted, by status (kyu_jobs_pruned).
        self.pruned: dict[str, int] = dict.fromkeys(("completed", "cancelled", "dead"), 0)
        self.sample: QueueSample | None = None
        #: Whether the last check (a sample, or a follower's ping) reached both servers.
        self.up = False
        for status in ("completed", "failed", "dead", "requeued", "snoozed", "cancelled"):
            self.tally.processed[status] = 0
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(self)

    def forget_labels(self) -> None:
        """Drop cached job type labels: the set of known job types changed."""
        self._labels.clear()

    def job_type(self, job_type: str) -> str:
        label = self._labels.get(job_type)
        if label is None:
            label = job_type if self._is_known(job_type) else UNKNOWN
            if len(self._labels) < 10_000:  # ids of unknown types must not grow it forever
                self._labels[job_type] = label
        return label

    def started(self, job_type: str, wait: float) -> None:
        self.tally.observe_wait(self.job_type(job_type), max(wait, 0.0))

    def finished(self, job_type: str, status: str, duration: float) -> None:
        """``status``: completed, failed (retry scheduled), dead, requeued, snoozed or
        cancelled."""
        self.tally.finished(self.job_type(job_type), status, duration)

    def lost(self, dead: int) -> None:
        """Jobs the reaper declared dead (their worker was lost on their last try)."""
        if dead:
            self.tally.lost(dead)

    # ---- exposition (prometheus-client's Collector protocol) --------------------------

    def describe(self) -> Iterator[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families()

    def _families(self) -> Iterator[Metric]:
        q, t = self.queue, self.tally
        # Copies: a scrape may run in another thread (e.g. an application's own server).
        yield _counter("kyu_jobs_enqueued", q, {(): self.jobs_total.value})
        yield _counter("kyu_jobs_processed", q, _keyed(t.processed), "status")
        yield _counter("kyu_job_failures", q, _keyed(t.failures), "job_type")
        yield _counter("kyu_jobs_dead", q, {(): t.dead})
        yield _counter("kyu_retries", q, _keyed(t.retries), "job_type")
        yield _histogram(
            "kyu_job_duration_seconds", q, dict(t.duration), _DURATION_BUCKETS, "job_type", "status"
        )
        yield _histogram("kyu_job_wait_seconds", q, _keyed(t.wait), _WAIT_BUCKETS, "job_type")
        yield _gauge("kyu_jobs_running", q, {(): self.running.get()})
        yield _counter("kyu_scheduler_promoted", q, {(): self.promoted.value})
        yield _counter("kyu_reaper_rescued", q, {(): self.rescued.value})
        yield _counter("kyu_redis_resyncs", q, {(): self.resyncs.value})
        yield _counter("kyu_jobs_pruned", q, _keyed(self.pruned), "status")
        sample = self.sample
        yield _gauge("kyu_queue_depth", q, {} if sample is None else {(): sample.depth})
        yield _gauge("kyu_queue_lag_seconds", q, {} if sample is None else {(): sample.lag})
        yield _gauge(
            "kyu_jobs_by_status", q, {} if sample is None else _keyed(sample.by_status), "status"
        )
        yield _gauge(
            "kyu_queue_paused", q, {} if sample is None else {(): 1 if sample.paused else 0}
        )
        yield _gauge("kyu_up", q, {(): 1 if self.up else 0})
        yield _gauge("kyu_leader", q, {(): self.leader.get()})
        yield _gauge("kyu_info", q, {(self.version,): 1}, "version")


def _keyed(values: Mapping[str, _V]) -> dict[tuple[str, ...], _V]:
    return {(key,): value for key, value in list(values.items())}


def _counter(
    name: str, queue: str, values: Mapping[tuple[str, ...], int], *labels: str
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, HELP[name], labels=["queue", *labels])
    for key, value in sorted(values.items()):
        family.add_metric([queue, *key], value)  # no `created`: no `_created` sample
    return family


def _gauge(
    name: str, queue: str, values: Mapping[tuple[str, ...], float], *labels: str
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, HELP[name], labels=["queue", *labels])
    for key, value in sorted(values.items()):
        family.add_metric([queue, *key], value)
    return family


def _histogram(
    name: str,
    queue: str,
    values: Mapping[tuple[str, ...], _Histogram],
    bounds: tuple[float, ...],
    *labels: str,
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, HELP[name], labels=["queue", *labels])
    for key, h in sorted(values.items(), key=lambda item: item[0]):
        family.add_metric([queue, *key], *_cumulative(h, bounds))
    return family


def _cumulative(h: _Histogram, bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    counts, total = list(h.counts), h.sum
    running, buckets = 0, []
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        running += n
        # The `le` text prometheus-client writes: 0.005, 1.0, +Inf.
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
    return buckets, total


class MergedRegistries(Collector):
    """The registries of several queues as one exposition, for one metrics endpoint.

    Families of the same name are merged (HELP and TYPE once). A sample held alike by
    several registries, i.e. the same name and labels (each queue's registry has its own
    ``process_`` and ``python_info`` collectors, all reading this one process), appears
    once; ``kyu_`` samples never collide, as each carries its queue's name.

    Example::

        generate_latest(MergedRegistries([queue_a.metrics.registry, queue_b.metrics.registry]))
    """

    def __init__(self, registries: Sequence[CollectorRegistry]) -> None:
        self._registries = list(registries)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for registry in self._registries:
            for family in registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in seen:
                        seen.add(key)
                        into.samples.append(sample)
        return iter(merged.values())
