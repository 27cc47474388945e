"""``store/bulk.py``: COPY and row inserts write the same rows, JSON metadata and NULLs included."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text

from retro_platform.store.bulk import insert_chunks, insert_documents, uses_copy
from retro_platform.store.database import open_store
from retro_platform.store.models import Chunk, Corpus, Document

pytestmark = pytest.mark.postgres

DOCUMENTS = [
    {"external_id": "pkg/a.py", "meta": {"distribution": "pkg", "version": '1.0 ünï "q"'}},
    {"external_id": "b.txt", "meta": None},
    {"external_id": "tab\tand\nnewline ü.txt", "meta": {}},
]


def write(url: str, folder: Path, copy: bool) -> dict[str, list[tuple]]:
    with open_store(url, folder) as store:
        with store.session() as session:
            assert uses_copy(session, copy) == copy
            corpus = Corpus(
                fingerprint="f", reader="r", reader_options={}, tokenizer="bytes",
                tokenizer_options={}, tokenizer_file=None, vocab_size=256, pad_id=0,
                chunk_size=4, version=0,
            )  # fmt: skip
            session.add(corpus)
        with store.session() as session:
            rows = [
                {**document, "corpus_id": corpus.id, "checksum": "0" * 64, "num_bytes": 3,
                 "num_tokens": 9, "num_chunks": 3}
                for document in DOCUMENTS
            ]  # fmt: skip
            ids = insert_documents(session, rows, copy=copy)
            assert ids == sorted(ids) and len(set(ids)) == 3
            chunks = (
                {
                    "document_id": document_id, "position": position, "token_start": 4 * position,
                    "token_end": 4 * position + 4, "text": f"\\x00 'chunk' {position}\r\n",
                    "token_ids": np.arange(position, position + 4, dtype="<i4").tobytes(),
                }
                for document_id in ids
                for position in range(3)
            )  # fmt: skip
            assert insert_chunks(session, chunks, copy=copy) == 9
        with store.session() as session:
            columns = [c for c in Document.__table__.columns if c.name != "created_at"]
            return {
                "documents": [tuple(r) for r in session.execute(select(*columns).order_by("id"))],
                "json": session.scalars(text("SELECT meta::text FROM documents ORDER BY id")).all(),
                "created": session.scalars(
                    text("SELECT count(*) FROM documents WHERE created_at IS NOT NULL")
                ).all(),
                "chunks": [
                    tuple(r)
                    for r in session.execute(select(*Chunk.__table__.columns).order_by(Chunk.id))
                ],
            }


def test_copy_and_row_inserts_store_the_same_rows(postgres_server, tmp_path: Path) -> None:
    written = {}
    for copy in (True, False):
        name = f"test_{uuid.uuid4().hex[:16]}"
        postgres_server.create_database(name)
        written[copy] = write(postgres_server.url(name), tmp_path / str(copy), copy)
    assert written[True] == written[False]
    assert written[True]["created"] == [3]
    assert written[True]["documents"][1][-1] is None  # None is SQL NULL, not JSON null
    assert written[True]["documents"][0][-1] == DOCUMENTS[0]["meta"]
