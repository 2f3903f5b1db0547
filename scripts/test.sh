#!/usr/bin/env bash
# Set up (venv, local PostgreSQL/Redis), then lint, type-check and run the test suite.
# Arguments go to pytest, e.g. ./scripts/test.sh -x -k scheduler
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/setup.sh

echo "test: ruff check ."
.venv/bin/ruff check .

echo "test: mypy"
.venv/bin/mypy

echo "test: pytest $*"
exec .venv/bin/python -m pytest "$@"
