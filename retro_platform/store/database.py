"""Opening the store's database: engines, the schema version, sessions and files beside it.

:func:`open_store` is the one way in::

    store = open_store(experiment.store.database_url, experiment.store.path)
    with store.session() as session:          # commits on success, rolls back on error
        session.add(Corpus(...))
    array_path = store.path(embedding_set.file)  # files live under the store folder

An empty database is created at this version's schema (the Alembic head) by running the
migrations, which also stamp it; a database at the head is used as it is; any other database is
refused, unchanged, with a one-line :class:`~retro_platform.errors.StoreError` that names its
revision, the one this version needs and ``retro-platform db upgrade EXPERIMENT.toml``.

Passwords never leave this module: URLs are shown through :func:`safe_url`, and every database
error (cannot connect, authentication failed, database locked, ...) is re-raised as a one-line
``StoreError`` with the password scrubbed from the driver's text. An ``IntegrityError`` (a unique
or foreign-key violation) is passed through unchanged, so that callers can react to it.

SQLite connections get ``foreign_keys=ON``, a 30 s busy timeout and ``synchronous=NORMAL``;
the file is switched to WAL when it is migrated or accepted (WAL is a property of the file).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote, quote_plus

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from retro_platform.errors import StoreError
from retro_platform.store.models import Base

logger = logging.getLogger(__name__)

#: How long a SQLite connection waits for another writer before giving up.
BUSY_TIMEOUT_SECONDS = 30

#: What a refused database's message tells the user to run.
UPGRADE_COMMAND = "retro-platform db upgrade EXPERIMENT.toml"

_MASK = "***"


# ---------------------------------------------------------------- passwords out of sight


def safe_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``: the only form of a URL we print or log."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # not parseable: hide whatever sits between "user:" and "@"
        return re.sub(r"(//[^/:@]*:)[^@]*@", rf"\g<1>{_MASK}@", str(url))


def _secrets(url: str | URL) -> list[str]:
    """Every spelling of the password of ``url`` that could turn up in a message."""
    found: set[str] = set()
    try:
        password = make_url(url).password
    except (sa_exc.ArgumentError, ValueError, TypeError):
        password = None
    if password:
        found |= {str(password), quote(str(password), safe=""), quote_plus(str(password))}
    raw = re.search(r"//[^/:@]*:([^@]*)@", str(url))
    if raw and raw.group(1):
        found.add(raw.group(1))
    return sorted(found, key=len, reverse=True)


def scrub(text: str, url: str | URL) -> str:
    """``text`` on one line, with the URL masked and every spelling of its password removed."""
    text = str(text)
    raw = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    if raw:
        text = text.replace(raw, safe_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, _MASK)
    return " ".join(text.split())


def _describe(error: BaseException, url: str | URL) -> str:
    """The driver's own words for ``error`` (not SQLAlchemy's wrapper), scrubbed, shortened."""
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        text = str(error.orig) or type(error.orig).__name__
    else:
        text = str(error) or type(error).__name__
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text)
    text = scrub(text, url)
    return text if len(text) <= 400 else text[:397] + "..."


@contextmanager
def database_errors(url: str | URL, doing: str) -> Iterator[None]:
    """Re-raise any database error inside the block as a one-line, password-free StoreError.

    ``doing`` completes "cannot ... <url>" (e.g. ``"open the store database"``).
    ``IntegrityError`` passes through unchanged: it is the caller's to handle.
    """
    try:
        yield
    except sa_exc.IntegrityError:
        raise
    except (sa_exc.SQLAlchemyError, sqlite3.Error) as error:
        message = f"cannot {doing} {safe_url(url)}: {_describe(error, url)}"
        raise StoreError(message) from None


# ---------------------------------------------------------------- engines


def _parse(url: str | URL) -> URL:
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # not echoed: an unparseable URL could hide its password anywhere
        raise StoreError(
            "the store's database URL is not a SQLAlchemy URL (expected e.g. "
            "sqlite:///store/retro.db or postgresql+psycopg://user:password@host:5432/database)"
        ) from None


def _sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL, or None for an in-memory or URI-style database."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or url.query.get("uri"):
        return None
    return Path(database)


def make_engine(url: str | URL, *, migrations: bool = False) -> Engine:
    """An engine for ``url``; SQLite connections get our pragmas on every connect.

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
        if path is not None:
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


# ---------------------------------------------------------------- schema versions


def migrations_dir() -> Path:
    """The Alembic environment: ``retro_platform.migrations`` of the installed package (the
    repository's top-level ``migrations/``); a plain checkout's own folder as a fallback."""
    try:
        return Path(str(files("retro_platform.migrations")))
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "migrations"
        if (checkout / "env.py").is_file():
            return checkout
        raise StoreError(
            "the store's migrations are missing from this installation of retro-platform: "
            "reinstall it"
        ) from None


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic ``Config`` built in code: our migrations, and ``url`` as ``sqlalchemy.url``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    if url is not None:
        raw = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        config.set_main_option("sqlalchemy.url", raw.replace("%", "%%"))
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The schema revision this version of retro-platform needs."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise StoreError("the store's migrations have no revision: reinstall retro-platform")
    return str(head)


def _known_revisions() -> set[str]:
    return {script.revision for script in _script().walk_revisions()}


class _State:
    """What a database holds: its Alembic revision(s) and whether it has any of our tables."""

    def __init__(self, revisions: tuple[str, ...], our_tables: set[str]) -> None:
        self.revisions = revisions
        self.our_tables = our_tables

    @property
    def revision(self) -> str | None:
        return ",".join(self.revisions) or None

    def kind(self, head: str) -> str:
        """``head``, ``empty``, ``older`` (upgradable), ``unknown`` or ``unversioned``."""
        if self.revisions == (head,):
            return "head"
        if not self.revisions:
            return "unversioned" if self.our_tables else "empty"
        known = _known_revisions()
        return "older" if all(revision in known for revision in self.revisions) else "unknown"


def _state(engine: Engine) -> _State:
    with engine.connect() as connection:
        # tables first: SQLite reads each statement on its own, and a migration that commits
        # in between must not make a new store look like our tables without a revision
        tables = set(inspect(connection).get_table_names())
        revisions = tuple(MigrationContext.configure(connection).get_current_heads())
    return _State(revisions, tables & set(Base.metadata.tables))


def _sqlite_missing(url: URL) -> bool:
    """A SQLite file that does not exist yet (looking must not create it)."""
    path = _sqlite_file(url)
    return path is not None and not path.expanduser().exists()


def schema_status(url: str | URL) -> tuple[str | None, str]:
    """``(revision, kind)`` of the database at ``url``; changes nothing.

    ``kind`` is ``head`` (usable), ``empty`` (created on first use), ``older`` (``db upgrade``
    brings it to the head), ``unknown`` (a revision this version does not know) or
    ``unversioned`` (our tables without a revision). A missing SQLite file is ``empty`` and
    is not created.
    """
    parsed = _parse(url)
    if _sqlite_missing(parsed):
        return None, "empty"
    engine = make_engine(parsed)
    try:
        with database_errors(parsed, "read the schema revision of"):
            state = _state(engine)
        return state.revision, state.kind(head_revision())
    finally:
        engine.dispose()


def current_revision(url: str | URL) -> str | None:
    """The schema revision of the database at ``url`` (None: none recorded); changes nothing."""
    return schema_status(url)[0]


def _refusal(state: _State, kind: str, head: str, url: URL) -> str:
    """The one-line reason why this version cannot use the database as it is."""
    where = f"the store database {safe_url(url)}"
    if kind == "unversioned":
        tables = ", ".join(sorted(state.our_tables))
        return (
            f"{where} has retro-platform's tables ({tables}) but no schema revision (no "
            "alembic_version table), so its schema is unknown: move it aside and let "
            f"retro-platform create a new one (this version needs revision {head})"
        )
    if kind == "unknown":
        return (
            f"{where} is at schema revision {state.revision}, which this version of "
            f"retro-platform does not know (it needs revision {head}); a newer retro-platform "
            f"or another program made it, and `{UPGRADE_COMMAND}` upgrades only revisions this "
            "version knows"
        )
    return (
        f"{where} is at schema revision {state.revision}, but this version of retro-platform "
        f"needs revision {head}: upgrade it with `{UPGRADE_COMMAND}`"
    )


def upgrade(url: str | URL) -> tuple[str | None, str]:
    """Run the migrations of ``url`` up to the head; return ``(revision before, head)``.

    Used by ``retro-platform db upgrade``. Refuses, unchanged, a database this version cannot
    upgrade (an unknown revision, or our tables without a revision).
    """
    parsed = _parse(url)
    head = head_revision()
    engine = make_engine(parsed)
    try:
        with database_errors(parsed, "read the schema revision of"):
            state = _state(engine)
        kind = state.kind(head)
        if kind == "head":
            return head, head
        if kind in ("unknown", "unversioned"):
            raise StoreError(_refusal(state, kind, head, parsed))
        with database_errors(parsed, "upgrade"):
            command.upgrade(alembic_config(parsed), "head")
            _use_wal(engine)
        logger.info("upgraded %s from %s to %s", safe_url(parsed), state.revision, head)
        return state.revision, head
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the store


class Store:
    """An open retrieval store: the database (``engine``, :meth:`session`) and the folder of
    its files (``data_dir``, :meth:`path`). Make one with :func:`open_store`."""

    def __init__(self, engine: Engine, data_dir: Path) -> None:
        self.engine = engine
        self.data_dir = data_dir
        #: the database URL with its password masked: safe to print and log
        self.url = safe_url(engine.url)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Store({self.url!r}, data_dir={str(self.data_dir)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back on error.

        Objects stay readable after the block (``expire_on_commit=False``). Database errors
        become a one-line ``StoreError``, except ``IntegrityError``.
        """
        with (
            database_errors(self.engine.url, "use the store database"),
            self._sessions.begin() as session,
        ):
            yield session

    def path(self, relative: str | PurePath) -> Path:
        """The file that a path stored in SQL (relative to the store folder) names."""
        relative_path = PurePath(str(relative).replace("\\", "/"))
        if relative_path.is_absolute() or ".." in relative_path.parts or not str(relative):
            raise StoreError(
                f"a stored file path must be relative to the store folder {self.data_dir}, "
                f"without '..': {str(relative)!r}"
            )
        return self.data_dir / relative_path

    def relative(self, path: str | Path) -> str:
        """What to store in SQL for a file under the store folder: its relative POSIX path."""
        absolute = Path(path).expanduser().resolve()
        try:
            return absolute.relative_to(self.data_dir).as_posix()
        except ValueError:
            raise StoreError(
                f"{absolute} is outside the store folder {self.data_dir}: store files there"
            ) from None

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_store(url: str | URL, data_dir: str | Path) -> Store:
    """Open the store at ``url`` with its files in ``data_dir`` (both created if missing).

    An empty database is brought to the head revision by the migrations; a database at any
    other revision, or with our tables and no revision, is refused unchanged (``StoreError``).
    """
    parsed = _parse(url)
    folder = Path(data_dir).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the store folder {folder}: {error.strerror}") from None
    head = head_revision()
    engine = make_engine(parsed)
    try:
        with database_errors(parsed, "open the store database"):
            state = _state(engine)
        if state.kind(head) == "empty":
            logger.info("creating the store database %s at revision %s", safe_url(parsed), head)
            try:
                upgrade(parsed)
            except StoreError:
                # another process may have created it at the same moment
                with database_errors(parsed, "open the store database"):
                    if _state(engine).revisions != (head,):
                        raise
            with database_errors(parsed, "open the store database"):
                state = _state(engine)
        kind = state.kind(head)
        if kind != "head":
            raise StoreError(_refusal(state, kind, head, parsed))
        with database_errors(parsed, "open the store database"):
            _use_wal(engine)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, folder)
