#!/usr/bin/env bash
# Every benchmark with one command, on a fresh machine: scripts/setup.sh (venv, local
# PostgreSQL and Redis), the packages the benchmarks need (bench/requirements.txt), then
# `python -m bench`, which runs dispatch, throughput (with the floor), latency, peers
# (each installed from PyPI into bench/.venvs/<peer>) and scale, and prints the summary
# table (bench/results/SUMMARY.md). Arguments go to `python -m bench` (--quick, --only).
# The full run takes about 45 minutes on 2 cores (the peers run three times each).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
.venv/bin/python -m pip install --disable-pip-version-check -q -r bench/requirements.txt
exec .venv/bin/python -m bench "$@"
