"""Job ids: UUIDs whose leading 48 bits are the creation time in milliseconds (the
layout of RFC 9562's version 7), so that new rows land at the right-hand edge of the
primary-key index instead of on a random page of it. With millions of rows in the table
random ids touch a different, often uncached, index page per insert.

The other 74 bits come from os.urandom, so ids cannot be guessed from one another (an
application may show them to its users).
"""

from __future__ import annotations

import os
import time

_VERSION_7 = 0x7 << 76
_VARIANT = 0x2 << 62
_KEEP = ~((0xF << 76) | (0x3 << 62))


def new_job_ids(n: int) -> list[str]:
    """``n`` new ids, in increasing order of their time part."""
    # Wall-clock time, not the runtime's clock: this only orders ids roughly by age, and
    # nothing depends on it being exact or monotonic.
    stamp = (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80
    noise = os.urandom(10 * n)  # one system call for the whole batch
    ids = []
    for i in range(n):
        value = (stamp | int.from_bytes(noise[10 * i : 10 * i + 10], "big")) & _KEEP
        h = f"{value | _VERSION_7 | _VARIANT:032x}"
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids
