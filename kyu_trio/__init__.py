"""kyu-trio: a distributed job queue for trio, with PostgreSQL as the source of truth and
Redis as the dispatch queue.

Example::

    import trio
    from kyu_trio import Config, Queue

    queue = Queue(Config(dsn="postgresql://localhost/app"))

    @queue.handler("send_email")
    async def send_email(payload: str) -> None:
        ...

    trio.run(queue.serve)
"""

from ._broker._memory import MemoryBroker as MemoryBroker
from ._clients._asyncio import AsyncioClient as AsyncioClient
from ._clients._sync import Client as Client
from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._clock import TrioClock as TrioClock
from ._config import Config as Config
from ._cron import CronState as CronState
from ._errors import CommandError as CommandError
from ._errors import ConfigError as ConfigError
from ._errors import CronEntryNotFound as CronEntryNotFound
from ._errors import EnqueueOutcomeUnknown as EnqueueOutcomeUnknown
from ._errors import InvalidJobError as InvalidJobError
from ._errors import JobFailed as JobFailed
from ._errors import JobNotFound as JobNotFound
from ._errors import KyuConnectionError as KyuConnectionError
from ._errors import KyuError as KyuError
from ._errors import MetricsPortError as MetricsPortError
from ._errors import MissingExtraError as MissingExtraError
from ._errors import NotConnectedError as NotConnectedError
from ._errors import ProgressError as ProgressError
from ._errors import SchemaError as SchemaError
from ._errors import ServerError as ServerError
from ._errors import TransactionError as TransactionError
from ._errors import UnknownJobType as UnknownJobType
from ._job import Attempt as Attempt
from ._job import EnqueueRequest as EnqueueRequest
from ._job import Job as Job
from ._job import JobStatus as JobStatus
from ._ports import Broker as Broker
from ._ports import Store as Store
from ._processes import ProcessInfo as ProcessInfo
from ._runtime._handlers import CallNext as CallNext
from ._runtime._handlers import Handler as Handler
from ._runtime._handlers import Middleware as Middleware
from ._runtime._handlers import current_job as current_job
from ._runtime._queue import Queue as Queue
from ._runtime._serve_queues import serve_queues as serve_queues
from ._runtime._summary import RunSummary as RunSummary
from ._snooze import Snooze as Snooze
from ._stats import Stats as Stats
from ._store._memory import MemoryStore as MemoryStore
from ._version import __version__ as __version__

__all__ = [
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
