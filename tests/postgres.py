"""A real, throwaway PostgreSQL server for the tests, and the fixtures that hand it out.

``postgres_server`` (one per test session) runs ``initdb`` and ``pg_ctl`` from ``PATH`` or
``/usr/lib/postgresql/*/bin`` in a temporary folder, listening on 127.0.0.1 on a free port,
with password authentication (scram-sha-256) for the role :data:`USER`. PostgreSQL refuses to
run as root, so under root it runs as the unprivileged user ``nobody``, which owns the folder.
The server is stopped and its folder removed at the end of the session.

``postgres_url`` gives each test a fresh database (``CREATE DATABASE``), dropped afterwards.

Without PostgreSQL the tests that need it are skipped, except in CI (``CI=true``), where they
fail: CI installs PostgreSQL (``.ci/run``), so a missing server there is a broken set-up.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: The role the tests connect as (with a password, over TCP).
USER = "retro"
#: The unprivileged user the server runs as when the tests run as root.
RUN_AS = "nobody"


def find_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: from ``PATH`` first, else the newest Debian one."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path))

    return Path(max(found, key=version)).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; :meth:`start`, :meth:`url`, :meth:`stop`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.password = secrets.token_hex(16)
        self.root: Path | None = None
        self.port: int | None = None
        self._as: dict[str, Any] = {}

    # ---------------------------------------------------------- running the binaries

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        assert self.root is not None
        result = subprocess.run(
            [str(self.bin_dir / command[0]), *command[1:]],
            cwd=self.root,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LC_ALL": "C",
                "HOME": str(self.root),
            },
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            **self._as,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
                f"{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        log = self.root / "server.log" if self.root else None
        if log and log.exists():
            return "\nserver log:\n" + "\n".join(log.read_text().splitlines()[-20:])
        return ""

    def start(self) -> None:
        # under root, in /tmp: the server's user must be able to reach the folder
        parent = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="retro-postgres-", dir=parent))
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        if os.geteuid() == 0:
            account = pwd.getpwnam(RUN_AS)
            for path in (self.root, password_file):
                os.chown(path, account.pw_uid, account.pw_gid)
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self._run(
            "initdb",
            "--pgdata", str(self.root / "data"),
            "--username", USER,
            "--pwfile", str(password_file),
            "--auth", "scram-sha-256",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
        )  # fmt: skip
        password_file.unlink()
        for attempt in range(3):
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl", "start", "--pgdata", str(self.root / "data"),
                    "--log", str(self.root / "server.log"), "--wait", "--timeout", "60",
                    "--options", options,
                )  # fmt: skip
                return
            except RuntimeError:
                if attempt == 2:  # a port taken between choosing and binding: try another
                    raise

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run(
                    "pg_ctl", "stop", "--pgdata", str(self.root / "data"), "--mode", "immediate"
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # ---------------------------------------------------------- databases

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A SQLAlchemy URL for ``database`` (``password`` to try a wrong one)."""
        password = self.password if password is None else password
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        import psycopg

        conninfo = (
            f"host=127.0.0.1 port={self.port} user={USER} password={self.password} dbname=postgres"
        )
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(statement)

    def create_database(self, name: str) -> None:
        self._admin(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL tests need {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: .ci/run installs PostgreSQL, so this is a broken set-up)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the whole test session."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable("initdb and pg_ctl (on PATH or in /usr/lib/postgresql/*/bin)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg: pip install -e '.[test]'")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database of the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres_server.create_database(name)
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
