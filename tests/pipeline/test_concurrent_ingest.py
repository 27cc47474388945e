"""Several ``retro-platform ingest`` processes on one store at once: every document once.

Two real processes ingest the same experiment into one database, started together; the result
must equal one ingest's (the same documents, each once, with the same chunk texts and counts).
Without the corpus lock (``store/locks.py``) the second died with a UniqueViolation
(PostgreSQL) or "UNIQUE constraint failed" (SQLite) traceback.

On PostgreSQL the test makes the race certain instead of likely: it holds a SHARE lock on the
documents table (reads go on, writes wait) until both processes wait on a lock, so both have
read what is stored before either writes. Without the corpus lock both would then insert the
same documents; with it the second waits for the first's commit and finds them stored.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select

from retro_platform.cli.common import open_experiment
from retro_platform.corpus.ingest import ingest
from retro_platform.store.models import Chunk, Corpus, Document
from tests.limits import HANG_S
from tests.pipeline.helpers import write_experiment

#: Enough small documents that two free-running ingests meet on a batch (SQLite).
DOCUMENTS = 2000
#: Fewer suffice where the meeting is forced (PostgreSQL): two batches.
FORCED_DOCUMENTS = 400


def many_documents(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"doc{i:05d}.txt").write_text(f"document {i}: " + "retrieval " * (i % 40 + 1))
    return folder


def start_ingests(path: Path, processes: int = 2) -> list[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "retro_platform.cli", "ingest", str(path), "--no-progress"]
    return [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]


def finish(running: list[subprocess.Popen[str]]) -> list[str]:
    """Wait for every process; each must succeed. Their outputs."""
    outputs = []
    for process in running:
        stdout, stderr = process.communicate(timeout=HANG_S)
        assert process.returncode == 0, stderr
        outputs.append(stdout)
    return outputs


def contents(path: Path) -> tuple[dict[str, list[str]], int, int]:
    """external_id -> chunk texts in position order; the document and chunk row counts."""
    _, store = open_experiment(path)
    with store.session() as session:
        rows = session.execute(
            select(Document.external_id, Chunk.text)
            .join(Chunk)
            .order_by(Document.external_id, Chunk.position)
        ).all()
        documents = session.scalar(select(func.count()).select_from(Document))
        chunks = session.scalar(select(func.count()).select_from(Chunk))
        assert session.scalar(select(func.count()).select_from(Corpus)) == 1
    store.close()
    result: dict[str, list[str]] = {}
    for external_id, text in rows:
        result.setdefault(external_id, []).append(text)
    return result, documents, chunks


def check_one_ingests_result(tmp_path: Path, path: Path, corpus: Path, outputs: list[str]) -> None:
    """The store of ``path`` holds what one ingest of ``corpus`` stores, and each document was
    added by exactly one of the processes."""
    stored, documents, chunks = contents(path)
    files = sorted(corpus.iterdir())
    assert sorted(stored) == [file.name for file in files]
    for file in files:  # bytes tokenizer, 32-token chunks: 32 bytes each
        data = file.read_text()
        assert stored[file.name] == [data[i : i + 32] for i in range(0, len(data), 32)]
    alone = write_experiment(_folder(tmp_path / "alone"), corpus)  # SQLite, one process
    experiment, store = open_experiment(alone)
    single = ingest(experiment, store, progress=False)
    store.close()
    assert (documents, chunks) == (single.documents, single.chunks) == (len(files), chunks)
    added = sum(int(output.split(" added")[0].split(": ")[-1]) for output in outputs)
    assert added == len(files), outputs


@pytest.mark.slow
def test_two_ingests_at_once_store_every_document_once_sqlite(tmp_path: Path) -> None:
    corpus = many_documents(tmp_path / "corpus", DOCUMENTS)
    url = f"sqlite:///{tmp_path / 'together' / 'store' / 'retro.db'}"
    path = write_experiment(_folder(tmp_path / "together"), corpus, url)
    outputs = finish(start_ingests(path))
    check_one_ingests_result(tmp_path, path, corpus, outputs)


@pytest.mark.postgres
def test_two_ingests_that_read_at_once_store_every_document_once_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    corpus = many_documents(tmp_path / "corpus", FORCED_DOCUMENTS)
    path = write_experiment(_folder(tmp_path / "together"), corpus, postgres_url)
    open_experiment(path)[1].close()  # the schema, before the documents table is held
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as holder:
        holder.execute("LOCK TABLE documents IN SHARE MODE")  # reads go on, writes wait
        running = start_ingests(path)
        deadline = time.monotonic() + HANG_S
        with psycopg.connect(conninfo, autocommit=True) as watcher:
            while _waiting(watcher) < 2:  # both have read what is stored, neither has written
                assert all(process.poll() is None for process in running), finish(running)
                assert time.monotonic() < deadline, "the ingests never waited on a lock"
                time.sleep(0.1)
        holder.commit()  # the documents table is free
    check_one_ingests_result(tmp_path, path, corpus, finish(running))


def _waiting(connection: psycopg.Connection) -> int:
    """How many other connections to this database wait on a lock (a table's or advisory)."""
    return connection.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    ).fetchone()[0]


def _folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
