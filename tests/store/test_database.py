"""Opening the store: a new database is created at the head, others are refused unchanged."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text

from retro_platform.errors import StoreError
from retro_platform.store.database import Store, open_store
from retro_platform.store.engine import BUSY_TIMEOUT_SECONDS
from retro_platform.store.migrations import (
    UPGRADE_COMMAND,
    current_revision,
    head_revision,
    schema_status,
    upgrade,
)
from retro_platform.store.models import Base, Corpus
from tests.store.conftest import NEXT_REVISION, set_revision, snapshot


def corpus(fingerprint: str = "f" * 64) -> Corpus:
    return Corpus(
        fingerprint=fingerprint,
        reader="text-files",
        reader_options={"paths": ["a"]},
        tokenizer="bytes",
        tokenizer_options={},
        vocab_size=259,
        pad_id=0,
        chunk_size=64,
    )


def test_a_new_database_is_created_at_the_head_by_the_migrations(
    database_url: str, tmp_path: Path
) -> None:
    assert schema_status(database_url) == (None, "empty")
    with open_store(database_url, tmp_path / "files") as store:
        assert (tmp_path / "files").is_dir()
        assert store.data_dir == (tmp_path / "files").resolve()
        with store.engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            stamped = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert stamped == [(head_revision(),)]
    assert current_revision(database_url) == head_revision()
    assert schema_status(database_url) == (head_revision(), "head")


def test_a_database_at_the_head_is_used_as_it_is(database_url: str, tmp_path: Path) -> None:
    with open_store(database_url, tmp_path) as store, store.session() as session:
        session.add(corpus())
    before = snapshot(database_url)
    with open_store(database_url, tmp_path) as store, store.session() as session:
        assert session.scalars(select(Corpus.fingerprint)).all() == ["f" * 64]
    assert snapshot(database_url) == before


def test_the_sqlite_file_and_its_folder_are_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'retro.db'}"
    with open_store(url, tmp_path / "files"):
        pass
    assert (tmp_path / "deep" / "er" / "retro.db").is_file()


def test_sqlite_pragmas_are_on_for_every_connection(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'retro.db'}", tmp_path) as store:
        for _ in range(2):
            with store.session() as session:
                pragma = {
                    name: session.execute(text(f"PRAGMA {name}")).scalar()
                    for name in ("foreign_keys", "journal_mode", "synchronous", "busy_timeout")
                }
            assert pragma == {
                "foreign_keys": 1,
                "journal_mode": "wal",
                "synchronous": 1,  # NORMAL
                "busy_timeout": BUSY_TIMEOUT_SECONDS * 1000,
            }
            store.engine.dispose()  # the second round runs on a brand-new connection


def test_session_commits_on_success_and_rolls_back_on_error(store: Store) -> None:
    with store.session() as session:
        session.add(corpus("a" * 64))
    with pytest.raises(RuntimeError), store.session() as session:
        session.add(corpus("b" * 64))
        session.flush()
        raise RuntimeError("boom")
    with store.session() as session:
        assert session.scalars(select(Corpus.fingerprint)).all() == ["a" * 64]


def test_objects_stay_readable_after_the_session(store: Store) -> None:
    with store.session() as session:
        row = corpus()
        session.add(row)
    assert row.id is not None and row.fingerprint == "f" * 64


def test_an_older_database_is_refused_unchanged_until_db_upgrade(
    database_url: str, tmp_path: Path, newer_migrations: Callable[[], str]
) -> None:
    with open_store(database_url, tmp_path) as store, store.session() as session:
        session.add(corpus())
    old = newer_migrations()  # this "version" of retro-platform needs NEXT_REVISION
    before = snapshot(database_url)

    with pytest.raises(StoreError) as refused:
        open_store(database_url, tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    assert f"at schema revision {old}" in message
    assert f"needs revision {NEXT_REVISION}" in message
    assert UPGRADE_COMMAND.format(file="EXPERIMENT.toml") in message
    assert snapshot(database_url) == before
    assert schema_status(database_url) == (old, "older")

    assert upgrade(database_url) == (old, NEXT_REVISION)
    with open_store(database_url, tmp_path) as store, store.session() as session:
        assert session.scalars(select(Corpus.fingerprint)).all() == ["f" * 64]  # data kept
        assert session.execute(text("SELECT count(*) FROM test_extra")).scalar() == 0


def test_a_database_at_an_unknown_revision_is_refused_unchanged(
    database_url: str, tmp_path: Path
) -> None:
    with open_store(database_url, tmp_path):
        pass
    set_revision(database_url, "feedfacecafe")
    before = snapshot(database_url)
    for attempt in (lambda: open_store(database_url, tmp_path), lambda: upgrade(database_url)):
        with pytest.raises(StoreError) as refused:
            attempt()
        message = str(refused.value)
        assert "\n" not in message
        assert "revision feedfacecafe" in message and "does not know" in message
        assert head_revision() in message
        assert UPGRADE_COMMAND.format(file="EXPERIMENT.toml") in message
        assert snapshot(database_url) == before
    assert schema_status(database_url) == ("feedfacecafe", "unknown")


def test_our_tables_without_a_revision_are_refused_unchanged(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("sqlite"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)  # what an unversioned copy of the schema looks like
    engine.dispose()
    before = snapshot(database_url)
    for attempt in (lambda: open_store(database_url, tmp_path), lambda: upgrade(database_url)):
        with pytest.raises(StoreError, match="no schema revision") as refused:
            attempt()
        assert "\n" not in str(refused.value) and head_revision() in str(refused.value)
        assert snapshot(database_url) == before
    assert schema_status(database_url) == (None, "unversioned")


def test_other_programs_tables_do_not_stop_a_new_store(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE somebody_elses (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with open_store(database_url, tmp_path):
        pass
    assert schema_status(database_url) == (head_revision(), "head")


def test_upgrade_of_an_empty_database_and_of_one_at_the_head(database_url: str) -> None:
    assert upgrade(database_url) == (None, head_revision())
    assert upgrade(database_url) == (head_revision(), head_revision())


def test_looking_at_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nothing' / 'retro.db'}"
    assert schema_status(url) == (None, "empty")
    assert current_revision(url) is None
    assert not (tmp_path / "nothing").exists()


def test_store_paths_are_relative_to_the_store_folder(store: Store, tmp_path: Path) -> None:
    assert store.path("embeddings/a.npy") == tmp_path / "files" / "embeddings" / "a.npy"
    assert store.relative(store.path("indexes/flat.faiss")) == "indexes/flat.faiss"
    for bad in ("/etc/passwd", "../outside.npy", "a/../../b", ""):
        with pytest.raises(StoreError, match="relative to the store folder"):
            store.path(bad)
    with pytest.raises(StoreError, match="outside the store folder"):
        store.relative(tmp_path / "elsewhere.npy")


@pytest.mark.postgres
def test_the_store_shows_no_password(postgres_url: str, tmp_path: Path) -> None:
    with open_store(postgres_url, tmp_path) as store:
        password = postgres_url.split(":")[2].split("@")[0]
        assert password not in store.url and password not in repr(store)
        assert "***" in store.url


def test_a_bad_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a SQLAlchemy URL"):
        open_store("not a url at all", tmp_path)
    with pytest.raises(StoreError, match="unknown database backend 'nosuchdb'"):
        open_store("nosuchdb://user:pw@host/db", tmp_path)


def _open_after(barrier: Any, results: Any, url: str, folder: str) -> None:
    barrier.wait()
    try:
        with open_store(url, folder):
            results.put(current_revision(url))
    except Exception as error:  # reported to the test, which fails with it
        results.put(f"{type(error).__name__}: {error}")


def test_processes_opening_a_new_store_at_once_create_it_once(
    database_url: str, tmp_path: Path
) -> None:
    """What ``torchrun`` does: every worker opens the same, new store at the same moment."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [
        context.Process(target=_open_after, args=(barrier, results, database_url, str(tmp_path)))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    revisions = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert revisions == [head_revision()] * 3
