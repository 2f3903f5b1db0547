"""Which processes serve a queue: `ProcessInfo`, one row of ``kyu_processes`` as
`Queue.processes` returns it.

Each `serve()` process writes its own row when it starts and again every
``Config.leader_interval`` (from the task that campaigns for the maintenance lease), and
deletes it when it stops. A row not refreshed for three intervals has expired: the process
died or lost PostgreSQL. Reads leave expired rows out; the maintenance leader's pruner
deletes them an hour after they expired.
"""

from __future__ import annotations

from datetime import datetime

import attrs

#: A process's row expires this many times ``leader_interval`` after it was last written:
#: two missed refreshes (a PostgreSQL blip) do not make a live process disappear.
EXPIRY_INTERVALS = 3
#: Seconds after its expiry that the pruner deletes a row.
PRUNE_AFTER = 3600.0


@attrs.frozen
class ProcessInfo:
    """A process serving the queue, as it last recorded itself: ``process_id`` is the
    worker id its leases carry (``Job.locked_by`` of the jobs it runs, ``host:pid:random``),
    ``workers`` its `Config.workers`, ``started_at`` when its `serve()` began,
    ``last_seen`` its latest refresh (every `Config.leader_interval`), and ``leader``
    whether it holds the queue's maintenance lease now.

    Example::

        for p in await queue.processes():
            print(p.host, p.pid, p.workers, "leader" if p.leader else "")
    """

    process_id: str
    host: str
    pid: int
    workers: int
    started_at: datetime
    last_seen: datetime
    leader: bool = False
