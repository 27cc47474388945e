"""The stage-record pattern (``store/stages.py``) and the one reader of chunks
(``store/chunks.py``), on their own: the stages' tests (``tests/pipeline``) use them through
embeddings, indexes and neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import inspect

from retro_platform.store.arrays import resume_array
from retro_platform.store.chunks import count_chunks, describe_chunks, read_chunks
from retro_platform.store.database import Store
from retro_platform.store.models import (
    BUILDING,
    READY,
    Chunk,
    Corpus,
    Document,
    EmbeddingSet,
    NeighbourSet,
    VectorIndex,
)
from retro_platform.store.stages import (
    Progress,
    find_stage,
    finish,
    get_or_create_stage,
    is_ready,
    restart,
    stage_file,
)


def add_corpus(store: Store, name: str, documents: int, chunks: int) -> int:
    """A corpus whose chunk ``p`` of document ``d`` has the text ``f"{name}{d}.{p}"``."""
    with store.session() as session:
        corpus = Corpus(
            fingerprint=name * 64,
            reader="text-files",
            reader_options={},
            tokenizer="bytes",
            tokenizer_options={},
            vocab_size=259,
            pad_id=0,
            chunk_size=4,
        )
        for d in range(documents):
            document = Document(
                external_id=f"{name}/{d}", checksum="0" * 64, num_bytes=1, num_tokens=1
            )
            document.num_chunks = chunks
            document.chunks = [
                Chunk(
                    position=p,
                    token_start=p,
                    token_end=p + 1,
                    text=f"{name}{d}.{p}",
                    token_ids=np.array([d, p], dtype="<i4").tobytes(),
                )
                for p in range(chunks)
            ]
            corpus.documents.append(document)
        session.add(corpus)
        session.flush()
        return corpus.id


def embedding_values(corpus_id: int, key: str) -> dict:
    return {
        "corpus_id": corpus_id,
        "embedder": "hashing",
        "embedder_options": {},
        "corpus_version": 1,
        "dimension": 4,
        "count": 6,
        "file": stage_file("embeddings", key, ".npy"),
    }


def test_a_stage_row_is_made_once_building_then_found(store: Store) -> None:
    corpus_id = add_corpus(store, "a", documents=2, chunks=3)
    key = "e" * 64
    assert stage_file("embeddings", key, ".npy") == "embeddings/eeeeeeeeeeeeeeee.npy"
    with store.session() as session:
        assert find_stage(session, EmbeddingSet, key) is None
        made = get_or_create_stage(session, EmbeddingSet, key, **embedding_values(corpus_id, key))
        assert made.id is not None and made.status == BUILDING and made.done == 0
    with store.session() as session:
        found = get_or_create_stage(session, EmbeddingSet, key, **embedding_values(corpus_id, "x"))
        assert found.id == made.id and found.file == made.file
    assert not is_ready(store, found)


def test_progress_commits_rows_done_after_the_file_then_ready(store: Store) -> None:
    corpus_id = add_corpus(store, "a", documents=2, chunks=3)
    key = "e" * 64
    with store.session() as session:
        row = get_or_create_stage(session, EmbeddingSet, key, **embedding_values(corpus_id, key))
    path = store.path(row.file)
    vectors, done = resume_array(path, (6, 4), np.float32, row.done, "embedding", "fix")
    assert done == 0 and path.exists()
    saved = Progress(store, EmbeddingSet, row.id, vectors)
    vectors[:3] = 1.0
    saved.last_commit -= 60  # as if the last commit were a minute ago
    saved.update(3)
    with store.session() as session:
        row = session.get(EmbeddingSet, row.id)
        assert (row.done, row.status) == (3, BUILDING) and row.seconds >= 60
    # a resumed run goes on from the committed row, with the flushed rows in the file
    vectors, done = resume_array(path, (6, 4), np.float32, row.done, "embedding", "fix")
    assert done == 3 and (np.asarray(vectors[:3]) == 1.0).all()
    saved = Progress(store, EmbeddingSet, row.id, vectors)
    saved.update(6)  # too soon after the last commit: nothing committed
    with store.session() as session:
        assert session.get(EmbeddingSet, row.id).done == 3
    saved.finish(6)
    with store.session() as session:
        row = session.get(EmbeddingSet, row.id)
        assert (row.done, row.status) == (6, READY) and is_ready(store, row)
        maker = {"name": "hashing", "distribution": "retro-platform", "version": "9.9"}
        restart(row, maker)
        assert (row.done, row.status, row.plugin) == (0, BUILDING, maker)


def test_finish_sets_the_values_and_marks_the_row_ready(store: Store) -> None:
    corpus_id = add_corpus(store, "a", documents=1, chunks=1)
    with store.session() as session:
        embeddings = get_or_create_stage(
            session, EmbeddingSet, "e" * 64, **embedding_values(corpus_id, "e" * 64)
        )
        index = get_or_create_stage(
            session,
            VectorIndex,
            "i" * 64,
            embedding_set_id=embeddings.id,
            retriever="faiss-flat",
            retriever_options={},
            validation_fraction=0.0,
            dimension=4,
            file=stage_file("indexes", "i" * 64, ".faiss"),
        )
        assert index.count == 0
    done = finish(store, VectorIndex, index.id, count=6, seconds=1.5)
    assert (done.status, done.count, done.seconds) == (READY, 6, 1.5)
    assert not is_ready(store, done)  # ready in SQL, but no file yet
    store.path(done.file).parent.mkdir(parents=True)
    store.path(done.file).write_bytes(b"index")
    assert is_ready(store, done)


def test_read_chunks_streams_chosen_columns_in_id_order_in_blocks(store: Store) -> None:
    first = add_corpus(store, "a", documents=2, chunks=3)
    second = add_corpus(store, "b", documents=1, chunks=2)
    with store.session() as session:
        blocks = list(read_chunks(session, first, "id", "document_id", "text", block=4))
        assert [len(block) for block in blocks] == [4, 2]
        rows = [tuple(row) for block in blocks for row in block]
        assert [row[0] for row in rows] == sorted(row[0] for row in rows)
        assert [row[2] for row in rows] == ["a0.0", "a0.1", "a0.2", "a1.0", "a1.1", "a1.2"]
        later = [
            text for block in read_chunks(session, first, "text", offset=4) for (text,) in block
        ]
        assert later == ["a1.1", "a1.2"]
        tokens = [row for block in read_chunks(session, second, "token_ids") for row in block]
        assert [np.frombuffer(blob, "<i4").tolist() for (blob,) in tokens] == [[0, 0], [0, 1]]
        assert (count_chunks(session, first), count_chunks(session, second)) == (6, 2)
        assert list(read_chunks(session, 12345, "id")) == []

        chunk_id = rows[4][0]
        assert describe_chunks(session, [chunk_id, 10**9]) == {chunk_id: ("a/1", 1, "a1.1")}
        assert describe_chunks(session, []) == {}


@pytest.mark.parametrize("model", [EmbeddingSet, VectorIndex, NeighbourSet])
def test_stage_tables_have_the_columns_of_the_migrations_in_their_order(
    store: Store, model: type
) -> None:
    """The shared columns come from one mixin; the tables are the ones the migrations made."""
    migrated = [column["name"] for column in inspect(store.engine).get_columns(model.__tablename__)]
    assert [column.name for column in model.__table__.columns] == migrated
