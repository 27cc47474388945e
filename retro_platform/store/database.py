"""The store: its database (sessions) and the folder of its files, opened by :func:`open_store`.

:func:`open_store` is the one way in::

    store = open_store(experiment.store.database_url, experiment.store.path)
    with store.session() as session:          # commits on success, rolls back on error
        session.add(Corpus(...))
    array_path = store.path(embedding_set.file)  # files live under the store folder

An empty database is created at this version's schema (the Alembic head) by running the
migrations, which also stamp it; a database at the head is used as it is; any other database is
refused, unchanged, with a one-line :class:`~retro_platform.errors.StoreError` that names its
revision, the one this version needs and ``retro-platform db upgrade EXPERIMENT.toml``.

A store this process may not write (a read-only mount, another user's files) is opened
read-only for the commands that only read (``open_store(..., read_only=True)``: ``search``,
``store stats``, ``store check``, ``generate``), and refused with a one-line ``StoreError``
(:func:`~retro_platform.store.engine.read_only_refusal`) by those that write, before they
touch anything.

The parts it is built from, one job each: :mod:`~retro_platform.store.urls` (URLs, passwords
out of sight, one-line database errors), :mod:`~retro_platform.store.engine` (engines, SQLite's
pragmas and WAL) and :mod:`~retro_platform.store.migrations` (the schema version, upgrades).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath

from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker

from retro_platform.errors import StoreError
from retro_platform.store.engine import (
    _use_wal,
    make_engine,
    read_only_reason,
    read_only_refusal,
)
from retro_platform.store.migrations import (
    _refusal,
    _state,
    head_revision,
    sqlite_missing,
    upgrade,
)
from retro_platform.store.urls import _parse, database_errors, safe_url

logger = logging.getLogger(__name__)


class Store:
    """An open retrieval store: the database (``engine``, :meth:`session`) and the folder of
    its files (``data_dir``, :meth:`path`). Make one with :func:`open_store`."""

    def __init__(self, engine: Engine, data_dir: Path, *, url: URL | None = None) -> None:
        self.engine = engine
        self.data_dir = data_dir
        #: the database URL with its password masked: safe to print and log (``url``: the one
        #: the user gave, not the read-only ``file:`` URI an engine may open it through)
        self.url = safe_url(url if url is not None else engine.url)
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


def open_store(
    url: str | URL,
    data_dir: str | Path,
    *,
    read_only: bool = False,
    hint_file: str = "EXPERIMENT.toml",
) -> Store:
    """Open the store at ``url`` with its files in ``data_dir`` (both created if missing).

    An empty database is brought to the head revision by the migrations; a database at any
    other revision, or with our tables and no revision, is refused unchanged (``StoreError``,
    whose upgrade command names ``hint_file``).

    ``read_only=True`` is for a command that only reads: a store this process may not write
    (:func:`~retro_platform.store.engine.read_only_reason`) is then opened without writing
    anything. Without it such a store is refused
    (:func:`~retro_platform.store.engine.read_only_refusal`).
    """
    parsed = _parse(url)
    folder = Path(data_dir).expanduser().resolve()
    reason = read_only_reason(parsed, folder)
    if reason is not None and not read_only:
        raise StoreError(read_only_refusal(parsed, reason))
    if reason is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the store folder {folder}: {error.strerror}") from None
    elif sqlite_missing(parsed):
        raise StoreError(_nothing_to_read(parsed, reason))
    head = head_revision()
    engine = make_engine(parsed, read_only=reason is not None)
    try:
        with database_errors(parsed, "open the store database"):
            state = _state(engine)
        if state.kind(head) == "empty" and reason is None:
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
        if kind == "empty" and reason is not None:
            raise StoreError(_nothing_to_read(parsed, reason))
        if kind != "head":
            raise StoreError(_refusal(state, kind, head, parsed, hint_file))
        if reason is None:
            with database_errors(parsed, "open the store database"):
                _use_wal(engine)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, folder, url=parsed)


def _nothing_to_read(url: URL, reason: str) -> str:
    return (
        f"the store database {safe_url(url)} holds no store yet, and the store is read-only "
        f"here ({reason}): ingest into it where it is writable first"
    )
