"""Ingest through PostgreSQL's ``COPY``: the same rows as row inserts, and it resumes after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from retro_platform.cli.common import open_experiment
from retro_platform.corpus.ingest import ingest
from retro_platform.store.bulk import uses_copy
from retro_platform.store.models import Chunk, Corpus, Document
from tests.limits import HANG_S
from tests.pipeline.helpers import write_experiment

pytestmark = pytest.mark.postgres

#: Every column but the time a row was written.
DOCUMENT_COLUMNS = [column for column in Document.__table__.columns if column.name != "created_at"]
CHUNK_COLUMNS = list(Chunk.__table__.columns)


def rows(path: Path) -> dict[str, list[tuple]]:
    """Every document and chunk row of the experiment's store, by id; and the corpus version."""
    _, store = open_experiment(path)
    try:
        with store.session() as session:
            return {
                "documents": list(
                    map(tuple, session.execute(select(*DOCUMENT_COLUMNS).order_by(Document.id)))
                ),
                "chunks": list(
                    map(tuple, session.execute(select(*CHUNK_COLUMNS).order_by(Chunk.id)))
                ),
                "version": [(session.scalar(select(Corpus.version)),)],
            }
    finally:
        store.close()


def fresh_database(server) -> str:
    name = f"test_{uuid.uuid4().hex[:16]}"
    server.create_database(name)
    return server.url(name)


def test_copy_writes_the_same_rows_as_row_inserts(tmp_path: Path, postgres_server) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(600):  # several batches; some documents longer than a chunk slice
        (corpus / f"doc{i:04d}.txt").write_text(f"document {i} " + "retrieval ünïcode\t" * (i % 90))
    (corpus / "big.txt").write_text("x = 'a\\\\b'\n" * 20_000)  # 7,000+ chunks, one document
    (corpus / "bad.txt").write_bytes(b"caf\xe9")
    results = {}
    urls = {
        "copy": fresh_database(postgres_server),
        "rows": fresh_database(postgres_server),
        "sqlite": f"sqlite:///{tmp_path / 'sqlite' / 'retro.db'}",
    }
    for kind, url in urls.items():
        folder = tmp_path / kind
        folder.mkdir(exist_ok=True)
        path = write_experiment(folder, corpus, url)
        experiment, store = open_experiment(path)
        copy = kind == "copy"
        with store.session() as session:  # the row path is the one COPY is compared with
            assert uses_copy(session, copy) == copy
        first = ingest(experiment, store, progress=False, copy=copy)
        assert first.added == 601 and first.skipped == {"not UTF-8": 1}
        # a second ingest replaces a changed document, adds one and prunes one
        (corpus / "doc0007.txt").write_text("changed\n")
        (corpus / "new.txt").write_text("a new document\n")
        (corpus / "doc0008.txt").rename(tmp_path / f"doc0008-{kind}.txt")
        second = ingest(experiment, store, progress=False, copy=copy, prune=True)
        assert (second.added, second.replaced, second.removed) == (1, 1, 1)
        store.close()
        results[kind] = rows(path)
        # back as it was, for the next kind
        (tmp_path / f"doc0008-{kind}.txt").rename(corpus / "doc0008.txt")
        (corpus / "doc0007.txt").write_text("document 7 " + "retrieval ünïcode\t" * 7)
        (corpus / "new.txt").unlink()
    assert len(results["copy"]["chunks"]) > 7000
    assert results["copy"] == results["rows"]
    assert results["copy"] == results["sqlite"]


def test_a_killed_copy_ingest_resumes_to_the_same_result(tmp_path: Path, postgres_server) -> None:
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(3000):
        (corpus / f"doc{i:05d}.txt").write_text(f"document {i}: " + "retrieval " * (i % 50 + 1))
    url = fresh_database(postgres_server)
    path = write_experiment(tmp_path, corpus, url)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    command = [sys.executable, "-m", "retro_platform.cli", "ingest", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    count = 0
    deadline = time.monotonic() + 120
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                count = connection.execute("select count(*) from documents").fetchone()[0]
            except psycopg.errors.UndefinedTable:
                count = 0  # not created yet
            if count > 0:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"
    assert 0 < count < 3000

    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr
    assert "3000 documents" in result.stdout
    ours = rows(path)
    assert len({row[2] for row in ours["documents"]}) == len(ours["documents"]) == 3000
    documents = {row[0]: row[2] for row in ours["documents"]}  # id -> external id
    texts: dict[str, str] = {}
    for chunk in ours["chunks"]:
        texts[documents[chunk[1]]] = texts.get(documents[chunk[1]], "") + chunk[5]
    for i in (0, 1499, 2999):
        assert texts[f"doc{i:05d}.txt"] == (corpus / f"doc{i:05d}.txt").read_text()
    assert len(texts) == 3000
