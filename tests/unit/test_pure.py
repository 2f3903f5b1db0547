"""Pure modules: config validation, retry policy, scores, DSN masking, public surface."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

import kyu_trio
from kyu_trio import Config, ConfigError
from kyu_trio._dsn import mask_password, postgres_address, redis_address
from kyu_trio._retry import RetryPolicy
from kyu_trio._score import PRIORITY_MAX, PRIORITY_MIN, score


def test_public_surface() -> None:
    for name in (
        "Queue",
        "Config",
        "Job",
        "JobStatus",
        "current_job",
        "KyuError",
        "JobNotFound",
        "KyuConnectionError",
        "ConfigError",
        "EnqueueRequest",
        "UnknownJobType",
    ):
        assert name in kyu_trio.__all__, name
        assert getattr(kyu_trio, name) is not None
    assert issubclass(kyu_trio.JobNotFound, kyu_trio.KyuError)
    assert issubclass(kyu_trio.KyuConnectionError, kyu_trio.KyuError)
    assert issubclass(kyu_trio.ConfigError, kyu_trio.KyuError)
    assert [s.value for s in kyu_trio.JobStatus] == [
        "pending",
        "scheduled",
        "running",
        "failed",
        "completed",
        "dead",
        "cancelled",
    ]
    assert kyu_trio.JobStatus.DEAD == "dead"


def test_config_defaults_match_the_reference() -> None:
    c = Config()
    assert (c.dsn, c.redis_url) == ("postgresql://localhost:5432/kyu", "redis://localhost:6379/0")
    # workers: 100, not kyu's 5, chosen from bench/results/peers-defaults.md (issue 10).
    assert (c.workers, c.queue_name, c.metrics_port, c.metrics_host) == (
        100,
        "kyu:default",
        9090,
        "127.0.0.1",
    )
    assert (c.stale_job_timeout, c.scheduler_interval, c.reaper_interval) == (600, 5, 60)
    assert (c.default_job_timeout, c.max_backoff, c.shutdown_grace) == (30, 3600, 30)
    assert c.retry_jitter == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"workers": True},
        {"workers": 1.5},
        {"metrics_port": 70000},
        {"stale_job_timeout": 0},
        {"scheduler_interval": float("nan")},
        {"default_job_timeout": float("inf")},
        {"shutdown_grace": -1},
        {"pool_size": 0},
        {"retry_jitter": -0.1},
        {"heartbeat_interval": 700.0},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Config(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Config().workers = 3  # type: ignore[misc]


def test_from_env() -> None:
    env = {
        "KYU_DSN": "postgresql://u:pw@db:6000/x",
        "KYU_REDIS_URL": "redis://r:6380/2",
        "KYU_WORKERS": "7",
        "KYU_QUEUE": "emails",
        "KYU_METRICS_PORT": "0",
    }
    c = Config.from_env(env, shutdown_grace=3.0)
    assert (c.dsn, c.redis_url, c.workers, c.queue_name, c.metrics_port, c.shutdown_grace) == (
        "postgresql://u:pw@db:6000/x",
        "redis://r:6380/2",
        7,
        "emails",
        0,
        3.0,
    )
    assert Config.from_env({}) == Config()
    with pytest.raises(ConfigError, match="KYU_WORKERS"):
        Config.from_env({"KYU_WORKERS": "many"})


def test_backoff_is_exact_and_capped() -> None:
    policy = RetryPolicy(max_backoff=3600)
    assert [policy.delay(n) for n in range(5)] == [1, 2, 4, 8, 16]
    assert policy.delay(12) == 3600
    assert policy.delay(10**9) == 3600  # no overflow
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert policy.next_due(2, now) - now == timedelta(seconds=4)


def test_jitter_only_delays() -> None:
    policy = RetryPolicy(max_backoff=3600, jitter=0.5, rng=random.Random(1))
    delays = [policy.delay(3) for _ in range(200)]
    assert all(8 <= d <= 12 for d in delays)
    assert len(set(delays)) > 1


def test_score_orders_priority_then_sequence() -> None:
    assert score(PRIORITY_MAX, 2**37 - 1) < score(PRIORITY_MAX - 1, 0)
    assert score(0, 1) < score(0, 2)
    assert score(PRIORITY_MIN, 0) > score(0, 10**9)
    # Exactly representable: distinct integers map to distinct floats.
    assert score(PRIORITY_MIN, 2**37 - 1) == float(2**53 - 1)


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("host=h password=secret dbname=x", "host=h password=*** dbname=x"),
        ("host=h password='se cret' dbname=x", "host=h password=*** dbname=x"),
        ("postgresql://h/db?password=secret&x=1", "postgresql://h/db?password=***&x=1"),
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_mask_password(raw: str, masked: str) -> None:
    assert mask_password(raw) == masked


def test_addresses() -> None:
    assert postgres_address("postgresql://u:p@db.example:6543/x") == "db.example:6543"
    assert postgres_address("dbname=x") == "localhost:5432"
    assert redis_address("redis://cache:6380/1") == "cache:6380"
    assert redis_address("redis://localhost") == "localhost:6379"


def test_metric_labels_stay_bounded_for_unknown_job_types() -> None:
    from kyu_trio._runtime._metrics import Metrics

    metrics = Metrics("q", "0", {"known"}.__contains__)
    for i in range(1000):
        metrics.finished(f"random-{i}", "dead", 0.01)
        metrics.started(f"random-{i}", 0.01)
    metrics.finished("known", "completed", 0.01)
    assert len(metrics.tally.duration) == 2
    assert len(metrics.tally.wait) == 1
    registry = metrics.registry
    unknown = {"queue": "q", "job_type": "unknown"}
    assert registry.get_sample_value("kyu_job_failures_total", unknown) == 1000
    assert registry.get_sample_value("kyu_jobs_dead_total", {"queue": "q"}) == 1000


def test_zpopmin_reply_parsed_under_both_protocols() -> None:
    from kyu_trio._broker._redis import _popped

    resp3 = [[b"a", 1.0], [b"b", 2.5]]
    resp2 = [b"a", b"1", b"b", b"2.5"]
    assert _popped(resp3) == _popped(resp2) == {"a": 1.0, "b": 2.5}
    assert _popped([]) == {}


def test_job_tally_exposes_what_prometheus_client_would() -> None:
    # JobTally replaces prometheus-client's Counter/Histogram on the job path: the same
    # observations must give the same samples (prometheus-client itself is the oracle).
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from kyu_trio._runtime._metrics import _DURATION_BUCKETS, Metrics

    ours = Metrics("q", "0", lambda job_type: job_type != "unregistered")
    oracle = CollectorRegistry()
    processed = Counter(
        "kyu_jobs_processed", "Finished runs by outcome", ["queue", "status"], registry=oracle
    )
    duration = Histogram(
        "kyu_job_duration_seconds",
        "Handler run time",
        ["queue", "job_type", "status"],
        buckets=_DURATION_BUCKETS,
        registry=oracle,
    )
    for status in ("completed", "failed", "dead", "requeued", "snoozed", "cancelled"):
        processed.labels(queue="q", status=status)
    runs = [
        ("a", "completed", 0.0),
        ("a", "completed", 0.001),
        ("a", "completed", 0.0011),
        ("b", "failed", 2.5),
        ("b", "dead", 400.0),
        ("unregistered", "completed", 1.0),
    ]
    for job_type, status, seconds in runs:
        ours.finished(job_type, status, seconds)
        label = "unknown" if job_type == "unregistered" else job_type
        processed.labels(queue="q", status=status).inc()
        duration.labels(queue="q", job_type=label, status=status).observe(seconds)

    def samples(registry: CollectorRegistry) -> list[str]:
        # Ours has no `_created` samples (they read like counts): compare the rest.
        text = generate_latest(registry).decode().splitlines()
        return sorted(
            line
            for line in text
            if "_created" not in line
            and line.startswith(("kyu_jobs_processed", "kyu_job_duration_seconds"))
        )

    assert samples(ours.registry) == samples(oracle)
    assert len(samples(oracle)) > 40
