"""The exposition of `Metrics`, read from its registry without servers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.samples import Sample

from kyu_trio._runtime._metrics import HELP, Metrics, QueueSample

SAMPLED = {"kyu_queue_depth", "kyu_queue_lag_seconds", "kyu_jobs_by_status", "kyu_queue_paused"}


def samples(metrics: Metrics) -> list[Sample]:
    return [s for family in metrics.registry.collect() for s in family.samples]


def busy_metrics() -> Metrics:
    """Metrics with a sample in every kyu_ family, each label set included."""
    m = Metrics("kyu:orders", "9.9.9", lambda job_type: job_type == "known")
    m.jobs_total.inc(3)
    for status in ("completed", "failed", "dead", "requeued", "snoozed"):
        m.started("known", 0.01)
        m.finished("known", status, 0.2)
    m.started("other", 0.5)
    m.finished("other", "dead", 1.0)  # reported as job_type="unknown"
    m.lost(1)
    m.running.set_function(lambda: 2)
    m.promoted.inc(4)
    m.rescued.inc()
    m.resyncs.inc()
    m.sample = QueueSample(depth=5, lag=1.5, by_status={"pending": 5, "dead": 3})
    return m


def test_every_kyu_sample_names_its_queue_and_none_is_created() -> None:
    metrics = busy_metrics()
    families = [f for f in metrics.registry.collect() if f.name.startswith("kyu_")]
    assert {f.name for f in families if f.samples} == set(HELP)
    assert {f.name: f.documentation for f in families} == HELP
    exposed = samples(metrics)
    kyu = [s for s in exposed if s.name.startswith("kyu_")]
    assert [s for s in kyu if s.labels.get("queue") != "kyu:orders"] == []
    assert [s.name for s in exposed if s.name.endswith("_created")] == []
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in kyu}
    q = ("queue", "kyu:orders")
    assert values[("kyu_jobs_dead_total", (q,))] == 3  # 2 runs + 1 the reaper declared dead
    assert values[("kyu_jobs_processed_total", (q, ("status", "dead")))] == 3
    assert values[("kyu_job_failures_total", (("job_type", "unknown"), q))] == 1
    assert values[("kyu_jobs_running", (q,))] == 2
    assert values[("kyu_info", (q, ("version", "9.9.9")))] == 1


def test_sampled_gauges_are_absent_until_a_sample_succeeds() -> None:
    m = busy_metrics()
    m.sample = None  # none taken yet, or the last one failed
    names = {s.name for s in samples(m)}
    assert names.isdisjoint(SAMPLED)
    assert m.registry.get_sample_value("kyu_up", {"queue": "kyu:orders"}) == 0
    # Their HELP and TYPE stay, so the metric is known even without a value.
    assert {f.name for f in m.registry.collect()} >= SAMPLED
    m.sample = QueueSample(depth=0, lag=0.0, by_status={"pending": 0})
    m.up = True
    assert {s.name for s in samples(m)} >= SAMPLED
    assert m.registry.get_sample_value("kyu_up", {"queue": "kyu:orders"}) == 1


def test_a_follower_is_up_without_a_sample() -> None:
    # Only the maintenance leader samples the queue; another process that reaches both
    # servers is up, and exports no queue-wide gauge.
    m = busy_metrics()
    m.sample, m.up = None, True
    assert {s.name for s in samples(m)}.isdisjoint(SAMPLED)
    assert m.registry.get_sample_value("kyu_up", {"queue": "kyu:orders"}) == 1


def test_the_applications_own_metrics_keep_their_created_samples() -> None:
    """We leave `_created` out of our own families, not through prometheus-client's global
    switch, which belongs to the application."""
    busy_metrics()
    registry = CollectorRegistry()
    Counter("app_things", "the application's own counter", registry=registry)
    assert registry.get_sample_value("app_things_created") is not None
