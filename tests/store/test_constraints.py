"""The database itself keeps the store consistent: cascades and unique constraints, on SQLite
and on PostgreSQL. Deletes go through SQL (not the ORM's own cascade), so the database's
``ON DELETE CASCADE`` is what is tested."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retro_platform.store.database import Store
from retro_platform.store.models import (
    READY,
    Chunk,
    Corpus,
    Document,
    EmbeddingSet,
    NeighbourSet,
    VectorIndex,
)


def add_corpus(session: Session, name: str = "c", documents: int = 2, chunks: int = 3) -> Corpus:
    corpus = Corpus(
        fingerprint=name * 64,
        reader="text-files",
        reader_options={"paths": [name]},
        tokenizer="bytes",
        tokenizer_options={},
        vocab_size=259,
        pad_id=0,
        chunk_size=4,
    )
    for d in range(documents):
        document = Document(
            external_id=f"{name}/doc{d}.txt",
            checksum=f"{d:064x}",
            num_bytes=12,
            num_tokens=12,
            num_chunks=chunks,
        )
        document.chunks = [
            Chunk(
                position=p,
                token_start=4 * p,
                token_end=4 * p + 4,
                text="abcd",
                token_ids=bytes(16),
            )
            for p in range(chunks)
        ]
        corpus.documents.append(document)
    session.add(corpus)
    session.flush()
    return corpus


def add_derived(session: Session, corpus: Corpus) -> None:
    embeddings = EmbeddingSet(
        corpus_id=corpus.id,
        fingerprint="e" * 64,
        embedder="hashing",
        embedder_options={},
        corpus_version=1,
        dimension=8,
        count=6,
        file="embeddings/e.npy",
        status=READY,
    )
    session.add(embeddings)
    session.flush()
    index = VectorIndex(
        embedding_set_id=embeddings.id,
        fingerprint="i" * 64,
        retriever="faiss-flat",
        retriever_options={},
        validation_fraction=0.05,
        dimension=8,
        file="indexes/i.faiss",
    )
    session.add(index)
    session.flush()
    session.add(
        NeighbourSet(
            vector_index_id=index.id,
            fingerprint="n" * 64,
            k=2,
            exclusion="same-document",
            count=6,
            file="neighbours/n.npy",
        )
    )


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_deleting_a_document_deletes_its_chunks(store: Store) -> None:
    with store.session() as session:
        add_corpus(session, "a")
        add_corpus(session, "b")
    with store.session() as session:
        session.execute(delete(Document).where(Document.external_id == "a/doc0.txt"))
    with store.session() as session:
        assert count(session, Document) == 3
        assert count(session, Chunk) == 9
        remaining = session.scalars(select(Chunk.document_id).distinct()).all()
        assert len(remaining) == 3


def test_deleting_a_corpus_deletes_everything_made_from_it(store: Store) -> None:
    with store.session() as session:
        corpus = add_corpus(session, "a")
        add_derived(session, corpus)
        add_corpus(session, "b")
    with store.session() as session:
        session.execute(delete(Corpus).where(Corpus.fingerprint == "a" * 64))
    with store.session() as session:
        assert [count(session, m) for m in (Corpus, Document, Chunk)] == [1, 2, 6]
        assert [count(session, m) for m in (EmbeddingSet, VectorIndex, NeighbourSet)] == [0, 0, 0]


def test_a_chunk_needs_an_existing_document(store: Store) -> None:
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(
            Chunk(
                document_id=12345, position=0, token_start=0, token_end=1, text="x", token_ids=b""
            )
        )


@pytest.mark.parametrize(
    "duplicate",
    ["corpus fingerprint", "document external id", "chunk position", "embedding fingerprint"],
)
def test_unique_constraints_hold(store: Store, duplicate: str) -> None:
    with store.session() as session:
        corpus = add_corpus(session, "a", documents=1, chunks=1)
        add_derived(session, corpus)
        corpus_id, document_id = corpus.id, corpus.documents[0].id
    with pytest.raises(IntegrityError), store.session() as session:
        if duplicate == "corpus fingerprint":
            add_corpus(session, "a", documents=0)
        elif duplicate == "document external id":
            session.add(
                Document(
                    corpus_id=corpus_id,
                    external_id="a/doc0.txt",
                    checksum="0" * 64,
                    num_bytes=0,
                    num_tokens=0,
                    num_chunks=0,
                )
            )
        elif duplicate == "chunk position":
            session.add(
                Chunk(
                    document_id=document_id,
                    position=0,
                    token_start=0,
                    token_end=1,
                    text="x",
                    token_ids=b"",
                )
            )
        else:
            session.add(
                EmbeddingSet(
                    corpus_id=corpus_id,
                    fingerprint="e" * 64,
                    embedder="other",
                    embedder_options={},
                    corpus_version=1,
                    dimension=8,
                    count=0,
                    file="embeddings/other.npy",
                )
            )
    with store.session() as session:  # the failed transaction left nothing behind
        assert [count(session, m) for m in (Corpus, Document, Chunk, EmbeddingSet)] == [1, 1, 1, 1]


def test_the_same_external_id_in_two_corpora_is_fine(store: Store) -> None:
    with store.session() as session:
        first = add_corpus(session, "a", documents=1)
        second = add_corpus(session, "b", documents=0)
        second.documents.append(
            Document(
                external_id=first.documents[0].external_id,
                checksum="1" * 64,
                num_bytes=1,
                num_tokens=1,
                num_chunks=0,
            )
        )
    with store.session() as session:
        assert count(session, Document) == 2


def test_json_options_and_binary_tokens_round_trip(store: Store) -> None:
    with store.session() as session:
        corpus = add_corpus(session, "a", documents=1, chunks=1)
        corpus.reader_options = {"paths": ["x", "y"], "nested": {"n": 1, "f": 0.5}}
        corpus.documents[0].chunks[0].token_ids = bytes(range(256))
    with store.session() as session:
        stored = session.scalars(select(Corpus)).one()
        assert stored.reader_options == {"paths": ["x", "y"], "nested": {"n": 1, "f": 0.5}}
        assert session.scalars(select(Chunk.token_ids)).one() == bytes(range(256))
