#!/usr/bin/env bash
# Set up (venv; local or throwaway servers), then lint, type-check, build the docs and run the
# test suite.
# Arguments go to pytest, e.g. ./scripts/test.sh -x -k scheduler
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/setup.sh

echo "test: ruff check ."
.venv/bin/ruff check .

echo "test: ruff format --check ."
.venv/bin/ruff format --check .

echo "test: mypy"
.venv/bin/mypy

# The documentation site, warnings as errors: a broken link, a missing example file or a
# public name without a docstring fails here (about 5 s).
echo "test: docs"
.venv/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

echo "test: pytest $*"
exec .venv/bin/python -m pytest "$@"
