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
from click.testing import CliRunner
from sqlalchemy import insert, inspect, select

from retro_platform.cli import cli
from retro_platform.errors import StoreError
from retro_platform.store.database import open_store
from retro_platform.store.engine import make_engine
from retro_platform.store.migrations import alembic_config, head_revision, upgrade
from retro_platform.store.models import Base, Chunk, Corpus, Document

ROOT = Path(__file__).resolve().parents[2]

#: The first released schema, before documents had metadata.
INITIAL = "ef48affcf5f2"


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


def test_db_upgrade_moves_an_initial_store_to_the_head_and_keeps_its_rows(
    database_url: str, tmp_path: Path
) -> None:
    """A store made by the first release, with a document and its chunk, upgraded by the CLI."""
    command.upgrade(alembic_config(database_url), INITIAL)
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:  # the initial schema's columns only (no meta)
            [corpus_id] = connection.execute(
                insert(Corpus.__table__).returning(Corpus.id),
                {"fingerprint": "f" * 64, "reader": "text-files", "reader_options": {},
                 "tokenizer": "bytes", "tokenizer_options": {}, "vocab_size": 257, "pad_id": 0,
                 "chunk_size": 4, "version": 1},
            ).one()  # fmt: skip
            [document_id] = connection.execute(
                insert(Document.__table__).returning(Document.id),
                {"corpus_id": corpus_id, "external_id": "a.txt", "checksum": "c" * 64,
                 "num_bytes": 4, "num_tokens": 4, "num_chunks": 1},
            ).one()  # fmt: skip
            connection.execute(
                insert(Chunk.__table__),
                {"document_id": document_id, "position": 0, "token_start": 0, "token_end": 4,
                 "text": "abcd", "token_ids": b"\x01\x00\x00\x00" * 4},
            )  # fmt: skip
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match=f"at schema revision {INITIAL}, but"):
        open_store(database_url, tmp_path / "files")

    experiment = tmp_path / "experiment.toml"
    experiment.write_text(f'[store]\npath = "files"\nurl = "{database_url}"\n')
    result = CliRunner().invoke(cli, ["db", "upgrade", str(experiment)])
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f" from {INITIAL} to {head_revision()}\n")

    with open_store(database_url, tmp_path / "files") as store, store.session() as session:
        document = session.get(Document, document_id)
        assert (document.external_id, document.num_chunks, document.meta) == ("a.txt", 1, None)
        assert session.scalars(select(Chunk.text)).all() == ["abcd"]
        document.meta = {"version": "1.0"}
    with open_store(database_url, tmp_path / "files") as store, store.session() as session:
        assert session.get(Document, document_id).meta == {"version": "1.0"}

    command.downgrade(alembic_config(database_url), INITIAL)  # and back: the rows stay
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("documents")}
            texts = connection.execute(select(Chunk.__table__.c.text)).scalars().all()
    finally:
        engine.dispose()
    assert "meta" not in columns and texts == ["abcd"]
