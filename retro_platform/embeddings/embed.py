"""Embed every chunk of a corpus, resumably, into a float32 ``.npy`` file beside the store.

The file is ``(chunks, dimension)`` in chunk-id order (row ``i`` is row ``i`` of the corpus's
:class:`~retro_platform.corpus.chunk_table.ChunkTable`). Rows are written in order and the
count of finished rows is committed to SQL every few seconds, after the file is flushed, so a
killed run resumes at the last committed row and never trusts a row that was not flushed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from tqdm import tqdm

from retro_platform.config import Experiment
from retro_platform.corpus.chunk_table import count_chunks
from retro_platform.errors import ConfigError, StoreError
from retro_platform.protocols import Embedder
from retro_platform.store.arrays import open_array
from retro_platform.store.fingerprints import fingerprint, short
from retro_platform.store.models import BUILDING, READY, Chunk, Corpus, Document, EmbeddingSet

#: Seconds between commits of progress (each costs a flush of the file and a transaction).
COMMIT_EVERY_S = 5.0


@dataclass(frozen=True)
class EmbeddingFile:
    """A finished embedding set: where its vectors are and what they are."""

    id: int
    fingerprint: str
    path: Path
    dimension: int
    count: int
    normalized: bool

    @classmethod
    def from_row(cls, row: EmbeddingSet, store: Any) -> EmbeddingFile:
        return cls(
            row.id, row.fingerprint, store.path(row.file), row.dimension, row.count, row.normalized
        )

    def open(self) -> np.ndarray:
        """The vectors, memory-mapped read-only: ``(count, dimension)`` float32."""
        return open_vectors(self.path, self.count, self.dimension, mode="r")


def embedding_fingerprint(experiment: Experiment, corpus: Corpus) -> str:
    """What identifies the embeddings of ``corpus`` (at its version) by the experiment's
    embedder: its name and every option but the runtime ones."""
    embedder = experiment.plugin_table("embedder")
    return fingerprint(
        corpus=corpus.fingerprint,
        version=corpus.version,
        embedder=embedder.name,
        options=embedder.stored_options,
    )


def embed_corpus(
    experiment: Experiment,
    store: Any,
    corpus_id: int,
    *,
    embedder: Embedder | None = None,
    reembed: bool = False,
    progress: bool | None = None,
) -> EmbeddingFile:
    """Embed the corpus's chunks with the experiment's embedder, or reuse a finished set.

    ``reembed`` embeds again from the first chunk even when a finished set is stored (for a
    model whose files changed under the same options).
    """
    table = experiment.plugin_table("embedder")
    embedder = embedder or table.build()
    with store.session() as session:
        corpus = session.get(Corpus, corpus_id)
        key = embedding_fingerprint(experiment, corpus)
        row = session.scalar(select(EmbeddingSet).where(EmbeddingSet.fingerprint == key))
        count = count_chunks(session, corpus_id)
        if row is None:
            row = EmbeddingSet(
                corpus_id=corpus_id,
                fingerprint=key,
                embedder=table.name,
                embedder_options=table.options,
                corpus_version=corpus.version,
                dimension=embedder.dimension,
                normalized=embedder.normalized,
                count=count,
                done=0,
                file=f"embeddings/{short(key)}.npy",
                status=BUILDING,
            )
            session.add(row)
            session.flush()
        elif row.count != count:  # same corpus version, so the chunks cannot have changed
            raise StoreError(
                f"embedding set {row.id} records {row.count} chunks but corpus {corpus_id} "
                f"has {count}; the store was changed outside retro-platform"
            )
        elif reembed:
            row.done, row.status = 0, BUILDING
            row.dimension, row.normalized = embedder.dimension, embedder.normalized
        record = _snapshot(row)

    if embedder.dimension != record["dimension"]:
        raise ConfigError(
            f"embedder {table.name!r} now gives {embedder.dimension}-d vectors but the stored "
            f"embeddings of this corpus are {record['dimension']}-d (did the model change?); "
            f"run: retro-platform index {experiment.hint_file} --reembed"
        )
    path = store.path(record["file"])
    if record["status"] == READY and path.exists():
        return _finished(record, path)
    _fill(store, record, path, embedder, progress)
    record["status"] = READY
    return _finished(record, path)


def open_vectors(path: Path, count: int, dimension: int, mode: str = "r") -> np.ndarray:
    """Open an embedding file, checking that it holds ``(count, dimension)`` float32."""
    fix = "retro-platform index EXPERIMENT.toml --reembed"
    return open_array(path, (count, dimension), np.float32, "embedding", fix, mode)


def _fill(
    store: Any, record: dict[str, Any], path: Path, embedder: Embedder, progress: bool | None
) -> None:
    """Write rows ``done .. count`` of the file, committing progress as it goes."""
    count, dimension, done = record["count"], record["dimension"], record["done"]
    if done == 0 or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        vectors = np.lib.format.open_memmap(path, "w+", np.float32, (count, dimension))
        done = 0
    else:
        vectors = open_vectors(path, count, dimension, mode="r+")

    last_commit = time.perf_counter()
    bar = tqdm(
        total=count,
        initial=done,
        unit="chunk",
        desc="embed",
        disable=None if progress is None else not progress,
    )
    with bar, store.session() as reading:
        texts = reading.scalars(
            select(Chunk.text)
            .join(Document)
            .where(Document.corpus_id == record["corpus_id"])
            .order_by(Chunk.id)
            .offset(done)
            .execution_options(yield_per=embedder.batch_size)
        )
        for batch in texts.partitions(embedder.batch_size):
            embedded = np.asarray(embedder.embed(list(batch)), dtype=np.float32)
            if embedded.shape != (len(batch), dimension):
                raise ConfigError(
                    f"embedder {record['embedder']!r} returned {embedded.shape} for "
                    f"{len(batch)} texts, expected ({len(batch)}, {dimension})"
                )
            vectors[done : done + len(batch)] = embedded
            done += len(batch)
            bar.update(len(batch))
            now = time.perf_counter()
            if now - last_commit >= COMMIT_EVERY_S:
                _commit_progress(store, record["id"], vectors, done, now - last_commit)
                last_commit = now
    if done != count:
        raise StoreError(
            f"embedding set {record['id']}: {done} of {count} chunks found; "
            f"the store changed while embedding, run the command again"
        )
    _commit_progress(store, record["id"], vectors, done, time.perf_counter() - last_commit, READY)
    record["done"] = done


def _commit_progress(
    store: Any, set_id: int, vectors: np.ndarray, done: int, seconds: float, status: str = BUILDING
) -> None:
    vectors.flush()  # the rows must be on disk before SQL says they are done
    with store.session() as session:
        row = session.get(EmbeddingSet, set_id)
        row.done = done
        row.seconds = (row.seconds or 0.0) + seconds
        row.status = status


def _snapshot(row: EmbeddingSet) -> dict[str, Any]:
    return {
        "id": row.id,
        "corpus_id": row.corpus_id,
        "fingerprint": row.fingerprint,
        "embedder": row.embedder,
        "dimension": row.dimension,
        "normalized": row.normalized,
        "count": row.count,
        "done": row.done,
        "file": row.file,
        "status": row.status,
    }


def _finished(record: dict[str, Any], path: Path) -> EmbeddingFile:
    return EmbeddingFile(
        record["id"],
        record["fingerprint"],
        path,
        record["dimension"],
        record["count"],
        record["normalized"],
    )
