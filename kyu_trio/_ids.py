"""Job ids: UUIDs whose leading 48 bits are the creation time in milliseconds (the
layout of RFC 9562's version 7), so that new rows land at the right-hand edge of the
primary-key index instead of on a random page of it. With millions of rows in the table
random ids touch a different, often uncached, index page per insert."""

from __future__ import annotations

import os
import time
import uuid


def new_job_id() -> str:
    # Wall-clock time, not the runtime's clock: this only orders ids roughly by age, and
    # nothing depends on it being exact or monotonic.
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | rand  # 48-bit time, then 80 random bits
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))
