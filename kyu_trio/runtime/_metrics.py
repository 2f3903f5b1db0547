"""Prometheus metrics of one `Queue`, in a private registry so several queues in one
process never clash. The names and labels of the reference (kyu) are kept, so its
users' dashboards keep working."""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterable, Iterator

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .._clock import Clock
from .._errors import KyuConnectionError
from .._job import JobStatus
from .._ports import Broker, Store

UNKNOWN = "unknown"
#: A sample that takes longer than this counts as the servers being down.
SAMPLE_LIMIT = 10.0

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class _Histogram:
    """Bucket counts of one label set (not cumulative; made cumulative on collection)."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class JobTally(Collector):
    """The per-job counters and histograms, kept as plain ints and floats and turned into
    Prometheus samples only when scraped.

    prometheus-client's own Counter and Histogram take a lock and make several calls per
    update, which cost more per job than the job's claim. Every update here happens on
    the trio thread, so no lock is needed; a scrape copies before it reads.
    """

    def __init__(self) -> None:
        self._created = time.time()  # exposition only (the `_created` samples)
        self.processed: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.dead = 0
        self.duration: dict[tuple[str, str], _Histogram] = {}
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

    def describe(self) -> Iterator[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families()

    def _families(self) -> Iterator[Metric]:
        created = self._created
        yield _counter("kyu_jobs_processed", "Finished runs by outcome", "status",
                       self.processed, created)
        yield _counter("kyu_job_failures", "Failed runs by job type", "job_type",
                       self.failures, created)
        yield CounterMetricFamily("kyu_jobs_dead", "Jobs that exhausted all retries",
                                  value=self.dead, created=created)
        yield _counter("kyu_retries", "Failed runs that were scheduled for a retry",
                       "job_type", self.retries, created)
        yield _histogram("kyu_job_duration_seconds", "Handler run time", ["job_type", "status"],
                         dict(self.duration).items(), _DURATION_BUCKETS, created)
        yield _histogram("kyu_job_wait_seconds", "Time from due to start", ["job_type"],
                         (((job_type,), h) for job_type, h in dict(self.wait).items()),
                         _WAIT_BUCKETS, created)


def _counter(
    name: str, doc: str, label: str, counts: dict[str, int], created: float
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label], created=created)
    for value, n in sorted(dict(counts).items()):  # a copy: a scrape may run in a thread
        family.add_metric([value], n, created=created)
    return family


def _histogram(
    name: str, doc: str, labels: list[str], items: Iterable[tuple[tuple[str, ...], _Histogram]],
    bounds: tuple[float, ...], created: float,
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in sorted(items, key=lambda item: item[0]):
        family.add_metric(list(values), *_cumulative(h, bounds))
        _add_created(family, dict(zip(labels, values, strict=True)), created)
    return family


def _add_created(family: Metric, labels: dict[str, str], created: float) -> None:
    # HistogramMetricFamily has no `created` argument; prometheus-client's Histogram
    # writes one `_created` sample per label set, and so do we.
    family.samples.append(Sample(f"{family.name}_created", labels, created))


def _cumulative(h: _Histogram, bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    counts, total = list(h.counts), h.sum
    running, buckets = 0, []
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        running += n
        # The `le` text prometheus-client writes: 0.005, 1.0, +Inf.
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
    return buckets, total


class Metrics:
    """Every metric kyu-trio exports. ``is_known`` bounds the ``job_type`` label: types
    without a registered handler are reported as ``unknown``."""

    def __init__(self, queue: str, version: str, is_known: Callable[[str], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._is_known = is_known
        self._labels: dict[str, str] = {}
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.jobs_total = Counter("kyu_jobs", "Jobs ever submitted through this process",
                                  registry=r)
        self.tally = JobTally()
        r.register(self.tally)
        self.depth = Gauge("kyu_queue_depth", "Job ids waiting in Redis", registry=r)
        self.lag = Gauge("kyu_queue_lag_seconds", "Age of the oldest due job not yet started",
                         registry=r)
        self.running = Gauge("kyu_jobs_running", "Jobs running in this process", registry=r)
        self.by_status = Gauge("kyu_jobs_by_status", "Jobs of this queue in PostgreSQL",
                               ["status"], registry=r)
        self.promoted = Counter("kyu_scheduler_promoted", "Due jobs pushed by the scheduler",
                                registry=r)
        self.rescued = Counter("kyu_reaper_rescued",
                               "Jobs taken back from lost workers (requeued or dead)",
                               registry=r)
        self.resyncs = Counter("kyu_redis_resyncs", "Redis resyncs from PostgreSQL",
                               registry=r)
        self.up = Gauge("kyu_up", "1 while the last sample reached PostgreSQL and Redis",
                        registry=r)
        info = Gauge("kyu_info", "kyu-trio version and queue", ["version", "queue"], registry=r)
        info.labels(version=version, queue=queue).set(1)
        for status in ("completed", "failed", "dead", "requeued"):
            self.tally.processed[status] = 0
        for status in JobStatus:
            self.by_status.labels(status=status.value)

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
        """``status``: completed, failed (retry scheduled), dead or requeued."""
        self.tally.finished(self.job_type(job_type), status, duration)

    def lost(self, dead: int) -> None:
        """Jobs the reaper declared dead (their worker was lost on their last try)."""
        if dead:
            self.tally.lost(dead)

class Sampler:
    """Keeps the gauges that describe the whole queue current (depth, lag, by status)."""

    def __init__(
        self, *, metrics: Metrics, queue: str, store: Store, broker: Broker, clock: Clock,
        interval: float, logger: logging.Logger,
    ) -> None:
        self._metrics = metrics
        self._queue = queue
        self._store = store
        self._broker = broker
        self._clock = clock
        self._interval = interval
        self._log = logger

    async def sample(self) -> None:
        m = self._metrics
        try:
            with trio.fail_after(SAMPLE_LIMIT):
                depth = await self._broker.size(self._queue)
                now = self._clock.now()
                stats = await self._store.queue_stats(self._queue, now)
        except (KyuConnectionError, trio.TooSlowError):
            m.up.set(0)
            return
        m.up.set(1)
        m.depth.set(depth)
        for status, n in stats.counts.items():
            m.by_status.labels(status=status.value).set(n)
        m.lag.set(0 if stats.oldest_due is None else
                  max((now - stats.oldest_due).total_seconds(), 0.0))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.sample()
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            await self.sample()

