#!/usr/bin/env bash
# Prepare everything kyu-trio needs to run its examples and tests, idempotently:
#   - .venv with the package installed editable ('.[dev]'), reinstalled only when
#     pyproject.toml changed since the last install;
#   - a local PostgreSQL on 127.0.0.1:5432 with database `test`, reachable as
#     postgresql://postgres@127.0.0.1:5432/test (installed with apt if absent);
#   - a local Redis on 127.0.0.1:6379 (installed with apt if absent);
#   - the `prometheus` binary (Debian's package, installed with apt if absent; not
#     started: tests/integration/test_dashboard.py runs its own on a free port). If it
#     cannot be installed, setup only warns and that test is skipped.
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

# ---- PostgreSQL ---------------------------------------------------------------------

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }
pg_query() { psql "$PG_URL/$1" -X -A -t -q -v ON_ERROR_STOP=1 -c "$2"; }

pg_version() {
    # Highest installed major version that has a cluster directory (or binaries).
    local v
    v="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1 || true)"
    if [[ -z "$v" ]]; then
        v="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1 || true)"
    fi
    printf '%s' "$v"
}

setup_local_postgres() {
    local ver=""
    if ! pg_ready; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1 \
            || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
            say "postgres: not installed; apt-get install postgresql"
            apt_install postgresql
        fi
        ver="$(pg_version)"
        [[ -n "$ver" ]] || die "PostgreSQL is installed but no version was found"
        if [[ ! -d "/etc/postgresql/$ver/main" ]]; then
            say "postgres: creating cluster $ver/main"
            as_root pg_createcluster "$ver" main >/dev/null
        fi
        say "postgres: starting cluster $ver/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start \
            || say "postgres: pg_ctlcluster start returned non-zero; waiting anyway"
        wait_for "$WAIT_SECONDS" pg_ready \
            || die "PostgreSQL did not accept connections on $PG_HOST:$PG_PORT within ${WAIT_SECONDS}s"
    fi
    say "postgres: accepting connections on $PG_HOST:$PG_PORT"
    if ! command -v psql >/dev/null 2>&1; then
        say "postgres: psql not installed; apt-get install postgresql-client"
        apt_install postgresql-client
    fi

    if ! pg_query postgres 'SELECT 1' >/dev/null 2>&1; then
        # A fresh Debian cluster asks for a password on TCP; the dev set-up uses trust.
        [[ -n "$ver" ]] || ver="$(pg_version)"
        local hba="/etc/postgresql/$ver/main/pg_hba.conf"
        [[ -n "$ver" && -f "$hba" ]] || die "cannot connect as $PG_URL/postgres (no pg_hba.conf to fix)"
        say "postgres: enabling trust auth for 127.0.0.1 and ::1 in $hba (local dev server)"
        as_root sed -i -e '1i host all all 127.0.0.1/32 trust' -e '1i host all all ::1/128 trust' "$hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
        wait_for 10 pg_query postgres 'SELECT 1' \
            || die "still cannot connect as $PG_URL/postgres after enabling trust auth"
    fi

    if [[ "$(pg_query postgres "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]]; then
        say "postgres: creating database $PG_DB"
        pg_query postgres "CREATE DATABASE $PG_DB" >/dev/null
    fi
    pg_query "$PG_DB" 'SELECT 1' >/dev/null || die "cannot connect to $PG_URL/$PG_DB"
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

redis_ready() { [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }

setup_local_redis() {
    if ! redis_ready; then
        if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1
        then
            say "redis: not installed; apt-get install redis-server"
            apt_install redis-server
        fi
        say "redis: starting redis-server on $REDIS_HOST:$REDIS_PORT"
        redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
            --save "" --appendonly no >/dev/null
        wait_for "$WAIT_SECONDS" redis_ready \
            || die "Redis did not answer PING on $REDIS_HOST:$REDIS_PORT within ${WAIT_SECONDS}s"
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

say "done"
