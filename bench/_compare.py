"""Shared machinery of the before/after benchmarks (`bench.unique`, `bench.limits`): a
baseline revision against the current working tree, in one run, in rounds that
alternate which side goes first, reported as median ratios with an interval and a
verdict.

Each side runs in its own subprocess (``python -m <module> --child <side> --child-out
<file> ...``) with its own ``kyu_trio`` (the baseline's from a temporary ``git worktree``
whose ``bench/`` is replaced by this tree's, so only the library differs), its own
scratch database (created and dropped here) and its own queue names. A check after every
round fails the run if the baseline's database reached the current tree's schema
version, i.e. if current code ran against it.

Statistics: each figure is the median of the per-round ratios with a distribution-free
interval for that median (order statistics; the widest one whose coverage is at least
90 %, or min..max when there are too few rounds for 90 %, with its coverage) and
min..max. Verdict at 0.95: **regression** when the whole interval, of 90 % coverage or
more (5 rounds or more), lies below it; **inconclusive** when only the median does;
**ok** otherwise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo

from ._common import DSN, REDIS_URL, ROOT

LIMIT = 0.95  # a gated figure below 95 % of the baseline's is a regression
COVERAGE = 0.90
SYSTEMS = ("baseline", "current")


# ---- inside a child: the side's own library and database -------------------------------


def check_library(system: str) -> str:
    """The path of the ``kyu_trio`` this process imported; `RuntimeError` unless it is
    the one of this side's tree (not the other tree's, nor the editable install's)."""
    import kyu_trio

    library = Path(kyu_trio.__file__).resolve()
    if not library.is_relative_to(ROOT):
        raise RuntimeError(f"{system}: imported kyu_trio from {library}, not from {ROOT}")
    return str(library)


def schema_version() -> int:
    with psycopg.connect(DSN) as conn:
        row = conn.execute("SELECT coalesce(max(version), 0) FROM kyu_schema_version").fetchone()
    return int(row[0]) if row else 0


# ---- statistics and verdicts (pure) -------------------------------------------------------


def median_interval(values: Sequence[float], coverage: float = COVERAGE) -> dict[str, float]:
    """The median of ``values`` and a distribution-free interval for it: sorted values
    x(k) and x(n+1-k) cover the true median with probability 1 - 2 P(Binomial(n, 1/2) < k);
    the widest k reaching ``coverage`` (k = 1, min..max, when none does).

    Example::

        median_interval([0.98, 1.01, 0.99, 1.03, 1.00, 0.97, 1.02])["median"]  # 1.00
    """
    s = sorted(values)
    n = len(s)

    def covered(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / float(2**n)

    k = 1
    while k + 1 <= (n + 1) // 2 and covered(k + 1) >= coverage:
        k += 1
    return {
        "median": statistics.median(s),
        "low": s[k - 1],
        "high": s[n - k],
        "coverage": covered(k),
        "min": s[0],
        "max": s[-1],
    }


def verdict(stats: Mapping[str, float], limit: float = LIMIT) -> str:
    """ "regression" when the whole interval (of at least 90 % coverage: 5 rounds or more)
    lies below ``limit``; "inconclusive" when only the median does, or the interval
    would but covers too little; else "ok"."""
    if stats["high"] < limit and stats["coverage"] >= COVERAGE:
        return "regression"
    if stats["median"] < limit:
        return "inconclusive"
    return "ok"


def figure(r: Mapping[str, Any], path: str, key: str) -> float:
    """Figure ``key`` at ``path`` (e.g. "current.processed") of one round's results."""
    node: Any = r
    for part in path.split("."):
        node = node[part]
    return float(node[key])


def ratios(rounds: Sequence[Mapping[str, Any]], top: str, bottom: str, key: str) -> list[float]:
    """Per round, figure ``key`` of ``top`` over that of ``bottom``: paths such as
    "current.enqueue" into the round's results."""
    return [figure(r, top, key) / figure(r, bottom, key) for r in rounds]


def fmt_stats(s: Mapping[str, float], digits: int = 3) -> str:
    """Two table cells: "median [low, high] (coverage)" and "min-max"."""
    d = digits
    return (
        f"{s['median']:.{d}f} [{s['low']:.{d}f}, {s['high']:.{d}f}] ({s['coverage']:.0%})"
        f" | {s['min']:.{d}f}-{s['max']:.{d}f}"
    )


def gated_row(
    rounds: Sequence[Mapping[str, Any]], label: str, section: str, key: str
) -> tuple[str, dict[str, Any]]:
    """The table row "| label | baseline | current | ratio | min-max | verdict |" of figure
    ``key`` of ``section`` (medians of the sides, median current / baseline ratio), and
    its figures: the ratio's statistics, verdict and per-round ratios."""
    r = ratios(rounds, f"current.{section}", f"baseline.{section}", key)
    stats = median_interval(r)
    v = verdict(stats)
    base = statistics.median([figure(x, f"baseline.{section}", key) for x in rounds])
    cur = statistics.median([figure(x, f"current.{section}", key) for x in rounds])
    row = f"| {label} | {base:,.0f} | {cur:,.0f} | {fmt_stats(stats)} | {v} |"
    return row, {**stats, "verdict": v, "ratios": r}


def verdict_text(gated: Mapping[str, Mapping[str, Any]]) -> tuple[str, list[str]]:
    """The "Verdict: ..." paragraph for gated figures (label -> figures with a
    "verdict"), and the labels of those that regressed."""
    failed = [label for label, g in gated.items() if g["verdict"] == "regression"]
    unsure = [label for label, g in gated.items() if g["verdict"] == "inconclusive"]
    text = (
        f"Verdict: a figure regresses when its whole interval, of {COVERAGE:.0%} coverage "
        f"or more (5 rounds or more), lies below {LIMIT:.2f} (slower by more than 5 % "
        "beyond the round-to-round noise; exit status 1); inconclusive when only the "
        "median does. "
        + (
            f"**Regression**: {', '.join(failed)}."
            if failed
            else f"Inconclusive: {', '.join(unsure)}."
            if unsure
            else "No regression."
        )
    )
    return text, failed


# ---- the run ------------------------------------------------------------------------------


@contextmanager
def baseline_tree(revision: str, name: str = "compare") -> Iterator[Path]:
    """``revision`` checked out in a temporary worktree, with this tree's ``bench/``
    copied over its own (so that only the library differs); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"kyu-bench-{name}-") as tmp:
        path = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(path), revision],
            check=True,
        )
        try:
            shutil.rmtree(path / "bench")
            shutil.copytree(
                ROOT / "bench",
                path / "bench",
                ignore=shutil.ignore_patterns(".venvs", "results", "__pycache__"),
            )
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
            )


@contextmanager
def scratch_databases(names: Sequence[str], name: str = "compare") -> Iterator[dict[str, str]]:
    """A fresh database per name on KYU_DSN's server; their DSNs; dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    dbs = {n: f"kyu_bench_{name}_{tag}_{n}" for n in names}
    with psycopg.connect(DSN, autocommit=True) as conn:
        for db in dbs.values():
            conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield {n: psycopg.conninfo.make_conninfo(DSN, dbname=db) for n, db in dbs.items()}
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            for db in dbs.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def run_side(
    root: Path, dsn: str, module: str, system: str, out: Path, args: Sequence[str]
) -> dict[str, Any]:
    """One round of one side: ``python -m module --child system --child-out out *args``
    in ``root``'s tree, against database ``dsn``; its JSON result."""
    command = [sys.executable, "-m", module, "--child", system, "--child-out", str(out), *args]
    # cwd and PYTHONPATH both: `-m` puts the working directory first on sys.path, and
    # the worker processes `run_workers` starts inherit both.
    env = {**os.environ, "PYTHONPATH": str(root), "KYU_DSN": dsn, "KYU_REDIS_URL": REDIS_URL}
    subprocess.run(command, cwd=root, env=env, check=True, timeout=3600)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def run_rounds(
    name: str,
    module: str,
    revision: str,
    rounds: int,
    child_args: Callable[[int, str], Sequence[str]],
    headline: Callable[[dict[str, Any]], str],
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``rounds`` rounds of both sides (each child reports its "schema_version"): round
    i runs the baseline first when i is even, the current tree first when odd (A B | B A
    ...), with ``child_args(i, side)``; prints a line per side with ``headline(result)``.
    Returns the rounds ({"order": [...], "baseline": ..., "current": ...}) and the
    schema versions of the sides."""
    done: list[dict[str, Any]] = []
    schema: dict[str, int] = {}
    roots = {"current": ROOT}
    with baseline_tree(revision, name) as base_root, scratch_databases(SYSTEMS, name) as dsns:
        roots["baseline"] = base_root
        out = base_root.parent / "round.json"
        for i in range(rounds):
            order = list(SYSTEMS) if i % 2 == 0 else list(reversed(SYSTEMS))
            entry: dict[str, Any] = {"order": order}
            for system in order:
                started = time.perf_counter()
                entry[system] = run_side(
                    roots[system], dsns[system], module, system, out, child_args(i, system)
                )
                print(
                    f"round {i + 1}/{rounds} {system}: "
                    f"{time.perf_counter() - started:.0f} s, {headline(entry[system])}",
                    flush=True,
                )
            base_v, cur_v = entry["baseline"]["schema_version"], entry["current"]["schema_version"]
            if base_v >= cur_v:
                raise RuntimeError(
                    f"the baseline's database is at schema version {base_v}, the current one "
                    f"at {cur_v}: the baseline ran code newer than {revision}"
                )
            schema = {"baseline": base_v, "current": cur_v}
            done.append(entry)
    return done, schema


def describe_current() -> str:
    """ "<HEAD> working tree", noting uncommitted changes in kyu_trio/."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "kyu_trio"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"{head} working tree" + (" (uncommitted changes in kyu_trio/)" if dirty else "")
