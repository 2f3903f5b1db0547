from __future__ import annotations

import time
import uuid

from kyu_trio._ids import new_job_ids


def test_ids_are_version_7_uuids_ordered_by_creation_millisecond() -> None:
    [first] = new_job_ids(1)
    time.sleep(0.002)
    later = [new_job_ids(1)[0] for _ in range(1000)]
    for text in (first, *later):
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert all(first < other for other in later)
    assert len(set(later)) == len(later)
    millis = uuid.UUID(first).int >> 80
    assert abs(millis - time.time_ns() // 1_000_000) < 60_000


def test_a_batch_of_ids_is_unique_and_well_formed() -> None:
    ids = new_job_ids(5000)
    assert len(set(ids)) == 5000
    assert all(uuid.UUID(i).version == 7 and str(uuid.UUID(i)) == i for i in ids)
    assert new_job_ids(0) == []
