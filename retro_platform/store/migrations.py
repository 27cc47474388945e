"""The store's schema version: Alembic's migrations, the revision a database is at, upgrades.

The migrations themselves are the package ``retro_platform.migrations`` (the repository's
top-level ``migrations/``, shipped inside the wheel; :func:`migrations_dir`), run through an
Alembic ``Config`` built in code (:func:`alembic_config`). This version of retro-platform needs
their head (:func:`head_revision`). :func:`schema_status` tells what a database holds and changes
nothing; :func:`upgrade` (``retro-platform db upgrade``) runs the migrations up to the head, and
refuses, unchanged, a database it cannot upgrade, with a one-line reason (:func:`_refusal`) that
names its revision, the one this version needs and :data:`UPGRADE_COMMAND`.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import URL, Engine

from retro_platform.errors import StoreError
from retro_platform.store.engine import (
    _use_wal,
    make_engine,
    read_only_reason,
    read_only_refusal,
)
from retro_platform.store.models import Base
from retro_platform.store.urls import _parse, _sqlite_file, database_errors, safe_url

logger = logging.getLogger(__name__)

#: What a refused database's message tells the user to run.
UPGRADE_COMMAND = "retro-platform db upgrade {file}"


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


def sqlite_missing(url: str | URL) -> bool:
    """A SQLite file that does not exist yet (looking must not create it)."""
    path = _sqlite_file(_parse(url))
    return path is not None and not path.expanduser().exists()


def schema_status(url: str | URL) -> tuple[str | None, str]:
    """``(revision, kind)`` of the database at ``url``; changes nothing.

    ``kind`` is ``head`` (usable), ``empty`` (created on first use), ``older`` (``db upgrade``
    brings it to the head), ``unknown`` (a revision this version does not know) or
    ``unversioned`` (our tables without a revision). A missing SQLite file is ``empty`` and
    is not created.
    """
    parsed = _parse(url)
    if sqlite_missing(parsed):
        return None, "empty"
    # looking must work on a store this process may not write
    engine = make_engine(parsed, read_only=read_only_reason(parsed) is not None)
    try:
        with database_errors(parsed, "read the schema revision of"):
            state = _state(engine)
        return state.revision, state.kind(head_revision())
    finally:
        engine.dispose()


def current_revision(url: str | URL) -> str | None:
    """The schema revision of the database at ``url`` (None: none recorded); changes nothing."""
    return schema_status(url)[0]


def _refusal(state: _State, kind: str, head: str, url: URL, hint_file: str) -> str:
    """The one-line reason why this version cannot use the database as it is (``hint_file``:
    the experiment file the upgrade command names)."""
    where = f"the store database {safe_url(url)}"
    command = UPGRADE_COMMAND.format(file=hint_file)
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
            f"or another program made it, and `{command}` upgrades only revisions this "
            "version knows"
        )
    return (
        f"{where} is at schema revision {state.revision}, but this version of retro-platform "
        f"needs revision {head}: upgrade it with `{command}`"
    )


def upgrade(url: str | URL, hint_file: str = "EXPERIMENT.toml") -> tuple[str | None, str]:
    """Run the migrations of ``url`` up to the head; return ``(revision before, head)``.

    Used by ``retro-platform db upgrade``. Refuses, unchanged, a database this version cannot
    upgrade (an unknown revision, or our tables without a revision); the refusal's commands
    name ``hint_file``.
    """
    parsed = _parse(url)
    reason = read_only_reason(parsed)
    if reason is not None:
        raise StoreError(read_only_refusal(parsed, reason))
    head = head_revision()
    engine = make_engine(parsed)
    try:
        with database_errors(parsed, "read the schema revision of"):
            state = _state(engine)
        kind = state.kind(head)
        if kind == "head":
            return head, head
        if kind in ("unknown", "unversioned"):
            raise StoreError(_refusal(state, kind, head, parsed, hint_file))
        with database_errors(parsed, "upgrade"):
            command.upgrade(alembic_config(parsed), "head")
            _use_wal(engine)
        logger.info("upgraded %s from %s to %s", safe_url(parsed), state.revision, head)
        return state.revision, head
    finally:
        engine.dispose()
