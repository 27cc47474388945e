"""Several ``retro-platform ingest`` processes on one store at once: every document once.

Two real processes ingest the same experiment into one database, started together; the result
must equal one ingest's (the same documents, each once, with the same chunk texts and counts).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from retro_platform.cli.common import open_experiment
from retro_platform.store.models import Chunk, Corpus, Document
from tests.limits import HANG_S
from tests.pipeline.helpers import write_experiment

#: Enough small documents that the two ingests overlap over many committed batches.
DOCUMENTS = 2000


def many_documents(folder: Path, count: int = DOCUMENTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"doc{i:05d}.txt").write_text(f"document {i}: " + "retrieval " * (i % 40 + 1))
    return folder


def ingest_together(path: Path, processes: int = 2) -> list[subprocess.CompletedProcess[str]]:
    """Start ``processes`` ingests of ``path`` at once; wait for all of them."""
    command = [sys.executable, "-m", "retro_platform.cli", "ingest", str(path), "--no-progress"]
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    done = []
    for process in running:
        stdout, stderr = process.communicate(timeout=HANG_S)
        done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return done


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


@pytest.mark.slow
def test_two_ingests_at_once_store_every_document_once(tmp_path: Path, database_url: str) -> None:
    corpus = many_documents(tmp_path / "corpus")
    path = write_experiment(_folder(tmp_path / "together"), corpus, database_url)
    results = ingest_together(path)
    for result in results:
        assert result.returncode == 0, result.stderr
    together, documents, chunks = contents(path)

    alone_url = f"sqlite:///{tmp_path / 'alone' / 'retro.db'}"
    alone_path = write_experiment(_folder(tmp_path / "alone"), corpus, alone_url)
    single = subprocess.run(
        [sys.executable, "-m", "retro_platform.cli", "ingest", str(alone_path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert single.returncode == 0, single.stderr
    expected, expected_documents, expected_chunks = contents(alone_path)

    assert (documents, chunks) == (expected_documents, expected_chunks) == (DOCUMENTS, chunks)
    assert together == expected
    # each document was added by exactly one of the two
    added = sum(int(result.stdout.split(" added")[0].split(": ")[-1]) for result in results)
    assert added == DOCUMENTS, [result.stdout for result in results]


def _folder(folder: Path) -> Path:
    os.makedirs(folder, exist_ok=True)
    return folder
