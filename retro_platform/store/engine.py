"""Engines for the store's database, with SQLite's pragmas and write-ahead logging.

SQLite connections get ``foreign_keys=ON``, a 30 s busy timeout (:data:`BUSY_TIMEOUT_SECONDS`)
and ``synchronous=NORMAL``; other backends get ``pool_pre_ping``. The file is switched to WAL
when it is migrated (``make_engine(..., migrations=True)``) or accepted by
:func:`~retro_platform.store.database.open_store` (:func:`_use_wal`): WAL is a property of the
file, kept from then on.

A store this process may not write (:func:`read_only_reason`: a read-only mount, another user's
files) is opened with ``make_engine(..., read_only=True)``: SQLite then reads the file through a
``mode=ro`` URI and nothing is ever written, not even the WAL switch.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine

from retro_platform.errors import StoreError
from retro_platform.store.urls import READING_COMMANDS, _parse, _sqlite_file, safe_url

#: How long a SQLite connection waits for another writer before giving up.
BUSY_TIMEOUT_SECONDS = 30


def read_only_reason(url: str | URL, data_dir: Path | None = None) -> str | None:
    """Why this process cannot write the store at ``url`` (with its files in ``data_dir``), or
    None: the SQLite file, its folder (where WAL keeps its ``-wal`` and ``-shm`` files) or the
    store folder exists and may not be written (``os.access``: a read-only mount, permissions).
    """
    candidates = []
    path = _sqlite_file(_parse(url))
    if path is not None:
        path = path.expanduser()
        candidates += [path, path.parent]
    if data_dir is not None:
        candidates.append(Path(data_dir))
    for candidate in candidates:
        if candidate.exists() and not os.access(candidate, os.W_OK):
            return f"{candidate} is not writable"
    return None


def read_only_refusal(url: URL, reason: str) -> str:
    """The one line a command that writes gets on a store it may not write."""
    return (
        f"the store {safe_url(url)} is read-only here ({reason}): this command writes to it; "
        f"{READING_COMMANDS} can read it as it is"
    )


def make_engine(url: str | URL, *, migrations: bool = False, read_only: bool = False) -> Engine:
    """An engine for ``url``; SQLite connections get our pragmas on every connect.

    ``read_only=True`` opens a SQLite file so that nothing is written (:func:`_read_only_url`);
    other databases are opened as they are (a read command only reads).

    ``migrations=True`` is the engine the migrations run on (``migrations/env.py``). On SQLite
    its foreign keys are off, because batch mode rebuilds a table by dropping it, which would
    cascade deletes into its children; and every transaction is a real ``BEGIN IMMEDIATE``
    (Python's sqlite3 would leave DDL outside any transaction), so an upgrade is one write
    transaction that a second process waits for instead of seeing half of it.
    """
    parsed = _parse(url)
    options: dict[str, Any] = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        options["connect_args"] = {"timeout": BUSY_TIMEOUT_SECONDS}
        path = _sqlite_file(parsed)
        if path is not None and read_only:
            parsed = _read_only_url(parsed, path.expanduser())
        elif path is not None:
            folder = path.expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(
                    f"cannot create the folder {folder} of the SQLite database: {error.strerror}"
                ) from None
    else:
        options["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **options)
    except sa_exc.NoSuchModuleError:
        raise StoreError(
            f"unknown database backend {parsed.drivername!r} in {safe_url(parsed)} "
            "(use sqlite:///... or postgresql+psycopg://...)"
        ) from None
    except ImportError as error:
        raise StoreError(
            f"the database driver for {safe_url(parsed)} is not installed ({error}); for "
            "PostgreSQL: pip install 'retro-platform[postgres]' and a postgresql+psycopg:// URL"
        ) from None
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas(migrations=migrations))
        if migrations:
            event.listen(engine, "begin", _begin_immediate)
    return engine


def _read_only_url(url: URL, path: Path) -> URL:
    """``url`` as a ``file:`` URI that SQLite opens read-only (``mode=ro``).

    A WAL file cannot be read without its ``-shm`` shared memory, which a reader may not
    create in a read-only folder; so unless a writer elsewhere keeps ``-wal`` and ``-shm``
    beside it, the file is also declared ``immutable`` (no locks, no shared memory): what it
    holds is what the last writer checkpointed when it closed.
    """
    query = {"mode": "ro", "uri": "true"}
    if not (Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()):
        query["immutable"] = "1"
    uri = "file:" + quote(str(path.resolve()), safe="/")
    return url.set(database=uri).update_query_dict(query)


def _sqlite_pragmas(*, migrations: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA foreign_keys={'OFF' if migrations else 'ON'}")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            if migrations:  # only a database about to be migrated is changed
                _switch_to_wal(cursor)
        finally:
            cursor.close()
        if migrations:  # sqlite3 leaves transactions to us; _begin_immediate starts them
            dbapi_connection.isolation_level = None

    return on_connect


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _switch_to_wal(cursor: Any) -> None:
    """Switch a SQLite file to write-ahead logging (a property of the file, kept from then on).

    Switching needs a moment alone with the file, and SQLite reports "database is locked" at
    once instead of waiting, so this waits up to the busy timeout itself. A file already in
    WAL mode is left alone. In-memory databases stay as they are.
    """
    cursor.execute("PRAGMA journal_mode")
    if str(cursor.fetchone()[0]).lower() in ("wal", "memory"):
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.fetchall()
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _use_wal(engine: Engine) -> None:
    """Make sure a SQLite store's file is in WAL mode (one made before this rule, or by hand)."""
    if engine.dialect.name != "sqlite" or _sqlite_file(engine.url) is None:
        return
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            _switch_to_wal(cursor)
        finally:
            cursor.close()
    finally:
        connection.close()
