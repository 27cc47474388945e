"""The migrations build exactly what the models describe, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from retro_platform.store.database import alembic_config, head_revision, make_engine, upgrade
from retro_platform.store.models import Base

ROOT = Path(__file__).resolve().parents[2]


def test_models_and_migrations_agree(database_url: str) -> None:
    upgrade(database_url)
    command.check(alembic_config(database_url))  # raises if autogenerate finds a difference
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        engine.dispose()


def test_the_constraints_have_the_conventional_names(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            documents_fk = inspector.get_foreign_keys("documents")
            unique = inspector.get_unique_constraints("chunks")
    finally:
        engine.dispose()
    assert [fk["name"] for fk in documents_fk] == ["fk_documents_corpus_id_corpora"]
    assert [fk["options"].get("ondelete") for fk in documents_fk] == ["CASCADE"]
    assert [(u["name"], u["column_names"]) for u in unique] == [
        ("uq_chunks_document_id", ["document_id", "position"])
    ]


def test_downgrade_to_nothing_and_up_again(database_url: str) -> None:
    upgrade(database_url)
    config = alembic_config(database_url)
    command.downgrade(config, "base")
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    assert upgrade(database_url) == (None, head_revision())


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "merge the heads: alembic -c alembic.ini merge heads"
    assert len(script.get_bases()) == 1


def test_developers_alembic_ini_reaches_the_same_environment(tmp_path: Path) -> None:
    """``alembic -c alembic.ini -x url=...`` from the repository works as our code does."""
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    run = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "-x", f"url={url}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*run, "upgrade", "head"], check=True, capture_output=True, env=env)
    current = subprocess.run([*run, "current"], check=True, capture_output=True, text=True, env=env)
    assert f"{head_revision()} (head)" in current.stdout
    command.check(alembic_config(url))


@pytest.mark.postgres
def test_postgres_ids_are_bigint_and_sqlite_ids_are_rowids(
    postgres_url: str, tmp_path: Path
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'retro.db'}"
    types = {}
    for url in (postgres_url, sqlite_url):
        upgrade(url)
        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                columns = inspect(connection).get_columns("chunks")
                types[engine.dialect.name] = str(
                    next(c["type"] for c in columns if c["name"] == "id")
                )
        finally:
            engine.dispose()
    assert types == {"postgresql": "BIGINT", "sqlite": "INTEGER"}
