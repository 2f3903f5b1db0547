"""Pure: the Redis sorted-set score that orders ready jobs.

Workers pop the *lowest* score. Higher priority must come first, and within a priority
the job that became ready first (its ``seq``, drawn from a PostgreSQL sequence each
time the job becomes ready) comes first. Both fit exactly in a double's 53-bit mantissa:
16 bits of inverted priority above 37 bits of sequence.
"""

from __future__ import annotations

PRIORITY_MIN = -32768
PRIORITY_MAX = 32767
_SEQ_BITS = 37
_SEQ_MASK = (1 << _SEQ_BITS) - 1


def score(priority: int, seq: int) -> float:
    """Score for a job: lower pops first.

    >>> score(10, 5) < score(0, 1)
    True
    >>> score(0, 1) < score(0, 2)
    True
    """
    inverted = PRIORITY_MAX - priority  # 0 for the highest priority
    # The sequence wraps after 2**37 (137 billion readies); ordering is then
    # approximate for one wrap, never wrong about priority.
    return float((inverted << _SEQ_BITS) | (seq & _SEQ_MASK))
