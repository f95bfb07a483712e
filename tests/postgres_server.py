"""Test helpers for PostgreSQL: a throwaway cluster with ``wal_level=logical`` and the wal2json plugin,
started on a free loopback port for the test session (Debian packages ``postgresql`` and
``postgresql-15-wal2json``; ``bash infra/install-postgres.sh`` installs them).

The cluster lives in a fresh temporary directory: its data directory, its Unix socket and its log. TCP
connections from 127.0.0.1 authenticate with a password (scram-sha-256), so the connector is tested with
a DSN that holds one; local (socket) connections are trusted. PostgreSQL refuses to run as root: when the
tests run as root, ``initdb`` and ``pg_ctl`` run as the ``postgres`` system user (created by the Debian
package) through ``runuser -u postgres --``, and the temporary directory is handed to that user.

When the binaries or wal2json are missing the fixtures skip, except under CI (the ``CI`` environment
variable set), where they fail: CI must not pass by skipping the Postgres tests.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "tierflow"
DATABASE = "tierflow"
SYSTEM_USER = "postgres"
START_TIMEOUT_S = 30
INSTALL_HINT = "run `bash infra/install-postgres.sh` (Debian packages postgresql and postgresql-15-wal2json)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def _candidate_bindirs() -> list[Path]:
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                found.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    preferred = Path("/usr/lib/postgresql/15/bin")
    return [preferred, *found, *versions]


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (15 first, then ``pg_config
    --bindir``, then the newest Debian version), or None."""
    for candidate in _candidate_bindirs():
        if _has_server(candidate):
            return candidate
    return None


def wal2json_library(bindir: Path) -> Path | None:
    """The wal2json shared library of the server in ``bindir`` (Debian: ``/usr/lib/postgresql/N/lib``)."""
    candidates = [bindir.parent / "lib" / "wal2json.so"]
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        try:
            libdir = subprocess.run(
                [str(pg_config), "--pkglibdir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(Path(libdir) / "wal2json.so")
        except (OSError, subprocess.SubprocessError):
            pass
    return next((path for path in candidates if path.is_file()), None)


def unavailable_reason() -> str | None:
    """Why a Postgres test server cannot be started here, or None when it can."""
    bindir = find_bindir()
    if bindir is None:
        return f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: {INSTALL_HINT}"
    if wal2json_library(bindir) is None:
        return f"the wal2json plugin is not installed for the server in {bindir}: {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return (
                f"running as root, and there is no {SYSTEM_USER!r} system user to run PostgreSQL as "
                f"(PostgreSQL refuses to run as root): {INSTALL_HINT}"
            )
        if shutil.which("runuser") is None:
            return "running as root, and `runuser` (util-linux) is missing to run PostgreSQL as postgres"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it under CI (``CI`` set): CI must not go green by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def dsn_for(port: int, password: str, dbname: str = DATABASE, user: str = SUPERUSER) -> str:
    return f"host=127.0.0.1 port={port} dbname={dbname} user={user} password={password} connect_timeout=5"


@dataclass
class PostgresServer:
    """A running throwaway cluster. ``dsn`` names the database created for the session."""

    bindir: Path
    base: Path
    port: int
    password: str
    dsn: str

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def dsn_of(self, dbname: str) -> str:
        return dsn_for(self.port, self.password, dbname)

    def create_database(self, prefix: str = "t") -> tuple[str, str]:
        """A new, uniquely named database: ``(name, dsn)``."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn_of("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name, self.dsn_of(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` and the replication slots created in it."""
        import psycopg

        with psycopg.connect(self.dsn_of("postgres"), autocommit=True) as conn:
            slots = conn.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", (name,)
            ).fetchall()
            for slot, pid in slots:
                if pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_tail(self, size: int = 3000) -> str:
        return _tail(self.base / "postgres.log", size)


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def _as_postgres_user() -> bool:
    return os.geteuid() == 0


def _run(argv: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a server program, as the ``postgres`` system user when we are root."""
    if _as_postgres_user():
        argv = ["runuser", "-u", SYSTEM_USER, "--", *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _hand_over(path: Path) -> None:
    """Make ``path`` (and what is in it) the postgres user's when the server runs as that user."""
    if not _as_postgres_user():
        return
    entry = pwd.getpwnam(SYSTEM_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def init_cluster(bindir: Path, base: Path, password: str, wal_level: str = "logical") -> Path:
    """``initdb`` a cluster in ``base/data`` (superuser ``tierflow``, password auth over TCP, trust on
    the socket) and write its settings; returns the data directory."""
    data = base / "data"
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _hand_over(base)
    result = _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        cwd=base,
    )
    pwfile.unlink()
    if result.returncode != 0:
        raise RuntimeError(
            f"initdb failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    settings = {
        "wal_level": wal_level,
        "max_replication_slots": "10",
        "max_wal_senders": "10",
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{base}'",
        # A throwaway cluster: durability is not under test here, speed is.
        "fsync": "off",
        "full_page_writes": "off",
        "shared_buffers": "32MB",
        "max_connections": "40",
        "log_min_messages": "warning",
    }
    with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# tests/postgres_server.py\n")
        conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
    return data


def start_cluster(bindir: Path, base: Path, port: int) -> None:
    """``pg_ctl start`` on ``port`` and wait until the server accepts connections."""
    log = base / "postgres.log"
    result = _run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(base / "data"),
            "-l",
            str(log),
            "-o",
            f"-p {port}",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        ],
        cwd=base,
        timeout=START_TIMEOUT_S + 15,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"pg_ctl start on port {port} failed ({result.returncode}): {result.stderr[-1000:]} "
            f"log: {_tail(log)}"
        )


def stop_cluster(bindir: Path, base: Path) -> None:
    """``pg_ctl stop -m immediate`` (nothing in a throwaway cluster needs a clean shutdown)."""
    _run([str(bindir / "pg_ctl"), "-D", str(base / "data"), "stop", "-m", "immediate", "-w"], cwd=base)


@contextmanager
def run_postgres(wal_level: str = "logical", attempts: int = 3) -> Iterator[PostgresServer]:
    """Start a throwaway cluster, create database ``tierflow``, yield the server, stop it, delete it.

    The temporary directory is made with :func:`tempfile.mkdtemp` (under ``/tmp``, which the postgres
    user can traverse; pytest's own ``tmp_path`` is private to root). The port is picked by the OS and
    released just before the server binds it; a start that loses that race is retried on another port.
    """
    import psycopg

    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = find_bindir()
    assert bindir is not None
    base = Path(tempfile.mkdtemp(prefix="tierflow-pg-"))
    password = secrets.token_hex(12)
    started = False
    try:
        init_cluster(bindir, base, password, wal_level)
        last: Exception | None = None
        for _ in range(attempts):
            port = free_port()
            try:
                start_cluster(bindir, base, port)
            except RuntimeError as err:
                last = err
                continue
            started = True
            break
        if not started:
            raise RuntimeError(f"could not start PostgreSQL in {attempts} attempts: {last}")
        with psycopg.connect(dsn_for(port, password, "postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        yield PostgresServer(bindir, base, port, password, dsn_for(port, password))
    finally:
        if started:
            stop_cluster(bindir, base)
        shutil.rmtree(base, ignore_errors=True)
