"""The ``kyu-trio`` command line (also ``python -m kyu_trio``): the group and its helpers
in `_app`, the commands by group in the other modules.

Example::

    kyu-trio worker app.tasks:queue --workers 10
    kyu-trio enqueue send_email '{"to": "a@b.c"}' --priority 5
    kyu-trio stats --watch

Every command exits 0 on success and otherwise prints one line, ``error: <message>``, to
stderr: exit status 1 for an error of kyu-trio or its servers, 2 for a usage error or a
module path that cannot be imported.
"""

# Importing the command modules registers their commands on `cli`.
from . import _cron, _dashboard, _dev_command, _jobs, _worker
from ._app import cli, main
from ._parsing import parse_duration

__all__ = ["cli", "main", "parse_duration"]
del _cron, _dashboard, _dev_command, _jobs, _worker
