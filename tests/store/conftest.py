"""Fixtures of the store's tests.

The databases come from ``tests/conftest.py``: ``database_url`` (SQLite, then PostgreSQL) and
``postgres_url`` / ``postgres_server`` (the session's PostgreSQL server, ``tests/postgres.py``).
"""

from __future__ import annotations

import hashlib
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from retro_platform.store import migrations
from retro_platform.store.database import Store, open_store

#: A second revision, written into a copy of the migrations by ``newer_migrations``.
NEXT_REVISION = "0ddba11c0ffee"

_NEXT_REVISION_SOURCE = '''
"""A revision after the real head, for the tests: adds a table.

Revision ID: {revision}
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("test_extra", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("test_extra")
'''


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    """An open store on a fresh database (SQLite, then PostgreSQL), files in ``tmp_path``."""
    with open_store(database_url, tmp_path / "files") as opened:
        yield opened


@pytest.fixture
def newer_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], str]:
    """``activate()``: from now on this retro-platform's migrations have one more revision
    (:data:`NEXT_REVISION`, which adds a table ``test_extra``), as a newer version would.

    Databases made before ``activate()`` are then at an older revision.
    """

    def activate() -> str:
        head = migrations.head_revision()
        copy = tmp_path / "newer_migrations"
        shutil.copytree(
            migrations.migrations_dir(), copy, ignore=shutil.ignore_patterns("__pycache__")
        )
        source = _NEXT_REVISION_SOURCE.format(revision=NEXT_REVISION, head=head)
        (copy / "versions" / f"99990101_{NEXT_REVISION}_test_extra.py").write_text(
            textwrap.dedent(source)
        )
        monkeypatch.setattr(migrations, "migrations_dir", lambda: copy)
        return head

    return activate


def snapshot(url: str) -> object:
    """Everything that tells whether a database was changed: a SQLite file's bytes (with its
    WAL), or a PostgreSQL database's tables, columns, version rows and row counts."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return {
            file.name: hashlib.sha256(file.read_bytes()).hexdigest()
            for file in sorted(path.parent.glob(path.name + "*"))
            if not file.name.endswith("-shm")
        }
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            state: dict[str, object] = {}
            for table in sorted(inspector.get_table_names()):
                columns = [column["name"] for column in inspector.get_columns(table)]
                rows = connection.execute(text(f'SELECT * FROM "{table}"')).fetchall()
                state[table] = (columns, sorted(map(tuple, rows), key=repr))
            return state
    finally:
        engine.dispose()


def set_revision(url: str, revision: str) -> None:
    """Rewrite a database's recorded schema revision (as another version would have left it)."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()
