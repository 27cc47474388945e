"""Embed every chunk of a corpus, resumably, into a float32 ``.npy`` file beside the store.

The file is ``(chunks, dimension)`` in chunk-id order (row ``i`` is row ``i`` of the corpus's
:class:`~retro_platform.corpus.chunk_table.ChunkTable`). Rows are written in order and the
count of finished rows is committed to SQL every few seconds, after the file is flushed
(:class:`~retro_platform.store.stages.Progress`), so a killed run resumes at the last committed
row and never trusts a row that was not flushed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from retro_platform.config import Experiment
from retro_platform.errors import ConfigError, StoreError
from retro_platform.protocols import Embedder
from retro_platform.store.arrays import open_array, resume_array
from retro_platform.store.chunks import count_chunks, read_chunks
from retro_platform.store.fingerprints import fingerprint
from retro_platform.store.models import Corpus, EmbeddingSet
from retro_platform.store.stages import (
    Progress,
    get_or_create_stage,
    is_ready,
    restart,
    stage_file,
)

#: What repairs a damaged embedding file.
_FIX = "retro-platform index EXPERIMENT.toml --reembed"


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
        count = count_chunks(session, corpus_id)
        row = get_or_create_stage(
            session,
            EmbeddingSet,
            key,
            corpus_id=corpus_id,
            embedder=table.name,
            embedder_options=table.options,
            corpus_version=corpus.version,
            dimension=embedder.dimension,
            normalized=embedder.normalized,
            count=count,
            file=stage_file("embeddings", key, ".npy"),
        )
        if row.count != count:  # same corpus version, so the chunks cannot have changed
            raise StoreError(
                f"embedding set {row.id} records {row.count} chunks but corpus {corpus_id} "
                f"has {count}; the store was changed outside retro-platform"
            )
        if reembed:
            restart(row)
            row.dimension, row.normalized = embedder.dimension, embedder.normalized

    if embedder.dimension != row.dimension:
        raise ConfigError(
            f"embedder {table.name!r} now gives {embedder.dimension}-d vectors but the stored "
            f"embeddings of this corpus are {row.dimension}-d (did the model change?); "
            f"run: retro-platform index {experiment.hint_file} --reembed"
        )
    if not is_ready(store, row):
        _fill(store, row, embedder, progress)
    return EmbeddingFile.from_row(row, store)


def open_vectors(path: Path, count: int, dimension: int, mode: str = "r") -> np.ndarray:
    """Open an embedding file, checking that it holds ``(count, dimension)`` float32."""
    return open_array(path, (count, dimension), np.float32, "embedding", _FIX, mode)


def _fill(store: Any, row: EmbeddingSet, embedder: Embedder, progress: bool | None) -> None:
    """Write rows ``done .. count`` of the file, committing progress as it goes."""
    count, dimension = row.count, row.dimension
    path = store.path(row.file)
    shape = (count, dimension)
    vectors, done = resume_array(path, shape, np.float32, row.done, "embedding", _FIX)
    saved = Progress(store, EmbeddingSet, row.id, vectors)
    bar = tqdm(
        total=count,
        initial=done,
        unit="chunk",
        desc="embed",
        disable=None if progress is None else not progress,
    )
    with bar, store.session() as reading:
        blocks = read_chunks(reading, row.corpus_id, "text", block=embedder.batch_size, offset=done)
        for rows in blocks:
            batch = [text for (text,) in rows]
            embedded = np.asarray(embedder.embed(batch), dtype=np.float32)
            if embedded.shape != (len(batch), dimension):
                raise ConfigError(
                    f"embedder {row.embedder!r} returned {embedded.shape} for "
                    f"{len(batch)} texts, expected ({len(batch)}, {dimension})"
                )
            vectors[done : done + len(batch)] = embedded
            done += len(batch)
            bar.update(len(batch))
            saved.update(done)
    if done != count:
        raise StoreError(
            f"embedding set {row.id}: {done} of {count} chunks found; "
            f"the store changed while embedding, run the command again"
        )
    saved.finish(done)
