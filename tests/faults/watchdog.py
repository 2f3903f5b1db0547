"""Cleans up after a test process that died without running its teardown.

The fault suite starts servers and worker processes that outlive a test process killed
by a CI timeout or a second Ctrl-C. The harness starts this watchdog with a pipe on its
stdin and writes one line per resource:

    add <key> kill <pid>                       SIGKILL the process
    add <key> pg <pg_ctl> <datadir> <tmpdir>   pg_ctl stop -m immediate, then rm -rf tmpdir
    remove <key>                               cleaned up normally: forget it

When the pipe closes (the test process exited, however it did), whatever is still
registered is cleaned up. Signals are ignored so a Ctrl-C to the process group does not
stop the watchdog before it has done its job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys


def cleanup(action: list[str]) -> None:
    if action[0] == "kill":
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(action[1]), signal.SIGKILL)
    elif action[0] == "pg":
        pg_ctl, datadir, tmpdir = action[1:4]
        cmd = [pg_ctl, "-D", datadir, "-m", "immediate", "-w", "stop"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, capture_output=True, timeout=60)
        shutil.rmtree(tmpdir, ignore_errors=True)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    actions: dict[str, list[str]] = {}
    for line in sys.stdin:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "add":
            actions[parts[1]] = parts[2:]
        elif len(parts) == 2 and parts[0] == "remove":
            actions.pop(parts[1], None)
    # Processes first (workers), then servers.
    for action in sorted(actions.values(), key=lambda a: a[0] != "kill"):
        cleanup(action)


if __name__ == "__main__":
    main()
