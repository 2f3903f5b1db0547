"""What `import kyu_trio` offers: a change to the public surface is a decision, made here."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect

import kyu_trio


def test_all_is_pinned() -> None:
    assert kyu_trio.__all__ == [
        "AsyncioClient",
        "Attempt",
        "Broker",
        "CallNext",
        "Client",
        "Clock",
        "CommandError",
        "Config",
        "ConfigError",
        "CronEntryNotFound",
        "CronState",
        "EnqueueOutcomeUnknown",
        "EnqueueRequest",
        "Handler",
        "InvalidJobError",
        "Job",
        "JobFailed",
        "JobNotFound",
        "JobStatus",
        "KyuConnectionError",
        "KyuError",
        "MemoryBroker",
        "MemoryStore",
        "MetricsPortError",
        "Middleware",
        "MissingExtraError",
        "NotConnectedError",
        "ProcessInfo",
        "ProgressError",
        "Queue",
        "RunSummary",
        "SchemaError",
        "ServerError",
        "Snooze",
        "Stats",
        "Store",
        "SystemClock",
        "TransactionError",
        "TrioClock",
        "UnknownJobType",
        "__version__",
        "current_job",
        "serve_queues",
    ]
    assert all(hasattr(kyu_trio, name) for name in kyu_trio.__all__)


def test_the_packages_behind_it_are_private() -> None:
    for name in ("runtime", "store", "broker"):
        assert not hasattr(kyu_trio, name)
    for name in ("_runtime", "_store", "_broker"):
        assert importlib.util.find_spec(f"kyu_trio.{name}") is not None


def test_the_adapter_protocols_say_they_are_unstable() -> None:
    for protocol in (kyu_trio.Store, kyu_trio.Broker):
        assert "Unstable" in (protocol.__doc__ or "")
    # The in-memory adapters implement every method of their protocol.
    for protocol, adapter in (
        (kyu_trio.Store, kyu_trio.MemoryStore),
        (kyu_trio.Broker, kyu_trio.MemoryBroker),
    ):
        wanted = {
            n for n, _ in inspect.getmembers(protocol, inspect.isfunction) if not n.startswith("_")
        }
        assert wanted <= set(dir(adapter)), wanted - set(dir(adapter))


def test_the_version_has_one_home() -> None:
    from kyu_trio._version import __version__

    assert kyu_trio.__version__ == __version__
    assert importlib.metadata.version("kyu-trio") == __version__


async def test_aclose_is_the_trio_name_and_close_an_alias() -> None:
    queue = kyu_trio.Queue(store=kyu_trio.MemoryStore(), broker=kyu_trio.MemoryBroker())
    await queue.connect()
    assert queue.connected
    await queue.aclose()
    assert not queue.connected
    await queue.connect()
    await queue.close()
    assert not queue.connected
    await queue.aclose()  # closing a closed queue is a no-op
