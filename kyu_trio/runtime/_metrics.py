"""Prometheus metrics of one `Queue`, in a private registry so several queues in one
process never clash. The names and labels of the reference (kyu) are kept, so its
users' dashboards keep working."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from .._clock import Clock
from .._errors import KyuConnectionError
from .._job import JobStatus
from .._ports import Broker, Store

UNKNOWN = "unknown"
#: A sample that takes longer than this counts as the servers being down.
SAMPLE_LIMIT = 10.0

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    """Every metric kyu-trio exports. ``is_known`` bounds the ``job_type`` label: types
    without a registered handler are reported as ``unknown``."""

    def __init__(self, queue: str, version: str, is_known: Callable[[str], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._is_known = is_known
        self._wait_children: dict[str, Any] = {}
        self._finished_children: dict[tuple[str, str], list[Any]] = {}
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.jobs_total = Counter("kyu_jobs", "Jobs ever submitted through this process",
                                  registry=r)
        self.processed = Counter("kyu_jobs_processed", "Finished runs by outcome", ["status"],
                                 registry=r)
        self.failures = Counter("kyu_job_failures", "Failed runs by job type", ["job_type"],
                                registry=r)
        self.dead = Counter("kyu_jobs_dead", "Jobs that exhausted all retries", registry=r)
        self.retries = Counter("kyu_retries", "Failed runs that were scheduled for a retry",
                               ["job_type"], registry=r)
        self.duration = Histogram("kyu_job_duration_seconds", "Handler run time",
                                  ["job_type", "status"], buckets=_DURATION_BUCKETS, registry=r)
        self.wait = Histogram("kyu_job_wait_seconds", "Time from due to start",
                              ["job_type"], buckets=_WAIT_BUCKETS, registry=r)
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
            self.processed.labels(status=status)
        for status in JobStatus:
            self.by_status.labels(status=status.value)

    def forget_labels(self) -> None:
        """Drop cached label children: the set of known job types changed."""
        self._wait_children.clear()
        self._finished_children.clear()

    def job_type(self, job_type: str) -> str:
        return job_type if self._is_known(job_type) else UNKNOWN

    def started(self, job_type: str, wait: float) -> None:
        label = self.job_type(job_type)
        child = self._wait_children.get(label)
        if child is None:
            child = self._wait_children[label] = self.wait.labels(job_type=label)
        child.observe(max(wait, 0.0))

    def finished(self, job_type: str, status: str, duration: float) -> None:
        """``status``: completed, failed (retry scheduled), dead or requeued."""
        # labels() takes a lock and builds a key on every call: on the job path each
        # (label, status) is looked up once and its children kept (a bounded set).
        label = self.job_type(job_type)
        children = self._finished_children.get((label, status))
        if children is None:
            children = [self.processed.labels(status=status),
                        self.duration.labels(job_type=label, status=status)]
            if status in ("failed", "dead"):
                children.append(self.failures.labels(job_type=label))
            if status == "failed":
                children.append(self.retries.labels(job_type=label))
            if status == "dead":
                children.append(self.dead)
            self._finished_children[(label, status)] = children
        children[1].observe(duration)
        for i, child in enumerate(children):
            if i != 1:
                child.inc()

    def lost(self, dead: int) -> None:
        """Jobs the reaper declared dead (their worker was lost on their last try)."""
        if dead:
            self.processed.labels(status="dead").inc(dead)
            self.dead.inc(dead)


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

