#!/usr/bin/env bash
# Set up (venv, local PostgreSQL/Redis), then run examples/quickstart.py.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/setup.sh

exec .venv/bin/python examples/quickstart.py "$@"
