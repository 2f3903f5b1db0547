"""Every example runs to completion against the real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_to_completion(pg_dsn: str, redis_url: str) -> None:
    env = {**os.environ, "KYU_DSN": pg_dsn, "KYU_REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for job_type in ("completed", "dead"):
        assert job_type in result.stdout
