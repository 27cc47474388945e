"""Autoretrieval against the experiment's store: a generated chunk in, its neighbours out.

A completed chunk's token ids are decoded to text, embedded by the experiment's embedder and
searched in its finished index, exactly as ``retro-platform search`` searches a query; the
neighbours' tokens plus continuations come from the stored chunk tokens, as in training. The
chunk tokens and the chunk table are read once, when the retriever is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from retro_platform.config import Experiment
from retro_platform.corpus.chunk_table import ChunkTable, load_chunk_table
from retro_platform.corpus.ingest import find_corpus_id
from retro_platform.errors import ConfigError
from retro_platform.evaluation.samples import NeighbourChunk
from retro_platform.index.build import IndexRecord, open_run_index
from retro_platform.neighbours.aligned import (
    TokenStream,
    aligned_neighbour_tokens,
    alignment_offsets,
)
from retro_platform.neighbours.retrieved import load_chunk_tokens, neighbour_tokens
from retro_platform.protocols import Embedder, Retriever, Tokenizer
from retro_platform.store.chunks import describe_chunks


@dataclass(frozen=True)
class StoreRetriever:
    """Searches one stored index; call it with ``(c, m)`` chunk token ids (see
    :class:`~retro_platform.evaluation.samples.Retrieve`)."""

    store: Any
    retriever: Retriever
    embedder: Embedder
    tokenizer: Tokenizer
    table: ChunkTable
    chunk_tokens: np.ndarray  # (chunks, m) int32, chunk-id order
    continuation: np.ndarray  # (chunks,) row of each chunk's successor, -1 at a document's end
    k: int
    #: with [retrieval] align_neighbours: the documents' tokens, to cut aligned windows from
    stream: TokenStream | None = None

    def __call__(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(c, k, 2m)`` int64 neighbour tokens and ``(c, k)`` int64 chunk ids (``-1``: none)."""
        chunks = np.asarray(chunks)
        m = self.chunk_tokens.shape[1]
        if chunks.ndim != 2 or chunks.shape[1] != m:
            raise ValueError(f"chunks must be (c, {m}) token ids, got {chunks.shape}")
        if len(chunks) == 0:
            return np.empty((0, self.k, 2 * m), np.int64), np.empty((0, self.k), np.int64)
        texts = [self.tokenizer.decode(row) for row in chunks]
        vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32)
        _, ids = self.retriever.search(np.ascontiguousarray(vectors), self.k)
        ids = np.asarray(ids, dtype=np.int64)
        return self.neighbour_tokens(chunks, self.table.rows_of(ids)), ids

    def neighbour_tokens(self, chunks: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``(c, k, 2m)`` int64 tokens of the neighbours ``rows`` of the query ``chunks``, as
        the model was trained on them: each chunk plus its continuation, or the window of its
        document aligned with the query."""
        pad = self.tokenizer.pad_id
        if self.stream is None:
            tokens = neighbour_tokens(self.chunk_tokens, self.continuation, rows, pad)
        else:
            offsets = alignment_offsets(self.stream, chunks, rows, pad)
            tokens = aligned_neighbour_tokens(self.stream, rows, offsets, pad)
        return tokens.astype(np.int64)

    def describe(self, chunk_ids: np.ndarray) -> dict[int, NeighbourChunk]:
        """Document, position and text of each chunk id, in one query."""
        wanted = sorted({int(i) for i in np.asarray(chunk_ids).ravel() if i >= 0})
        if not wanted:
            return {}
        with self.store.session() as session:
            found = describe_chunks(session, wanted)
        return {chunk_id: NeighbourChunk(chunk_id, *about) for chunk_id, about in found.items()}

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode(ids)


@dataclass(frozen=True)
class ShuffledRetriever:
    """The sample retriever of a run trained on shuffled neighbours: every completed chunk gets
    ``k`` chunks drawn at random from the retrieval database, as in that run's training and
    evaluation, instead of its nearest ones."""

    store_retriever: StoreRetriever
    database_rows: np.ndarray  # rows of the chunks the index holds
    rng: np.random.Generator

    def __call__(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        base = self.store_retriever
        rows = self.database_rows[
            self.rng.integers(len(self.database_rows), size=(len(chunks), base.k))
        ]
        return base.neighbour_tokens(np.asarray(chunks), rows), base.table.chunk_ids[rows]

    def describe(self, chunk_ids: np.ndarray) -> dict[int, NeighbourChunk]:
        return self.store_retriever.describe(chunk_ids)


def make_retriever(
    experiment: Experiment,
    store: Any,
    index_record: IndexRecord,
    tokenizer: Tokenizer,
    embedder: Embedder,
    *,
    table: ChunkTable | None = None,
    chunk_tokens: np.ndarray | None = None,
    stream: TokenStream | None = None,
) -> StoreRetriever:
    """A retriever over ``index_record`` for generation.

    ``table`` and ``chunk_tokens`` (:func:`load_chunk_table`, :func:`load_chunk_tokens`) may be
    passed when the caller has them already; otherwise they are read from the store. So may the
    :class:`TokenStream` of ``[retrieval] align_neighbours``, otherwise built from them.

    Raises:
        ConfigError: the embedder's vectors do not fit the index.
    """
    if embedder.dimension != index_record.dimension:
        raise ConfigError(
            f"the embedder gives {embedder.dimension}-d vectors but index {index_record.id} "
            f"holds {index_record.dimension}-d ones (did the model change?); run: "
            f"retro-platform index {experiment.hint_file} --reembed"
        )
    retriever = open_run_index(experiment, index_record)
    if table is None or chunk_tokens is None:
        corpus_id = find_corpus_id(experiment, store)
        with store.session() as session:
            if table is None:
                table = load_chunk_table(session, corpus_id)
            if chunk_tokens is None:
                chunk_tokens = load_chunk_tokens(
                    session, corpus_id, experiment.retrieval.chunk_size, tokenizer.pad_id
                )
    return StoreRetriever(
        store=store,
        retriever=retriever,
        embedder=embedder,
        tokenizer=tokenizer,
        table=table,
        chunk_tokens=chunk_tokens,
        continuation=table.continuation_rows(),
        k=experiment.retrieval.neighbours,
        stream=(stream or TokenStream.build(table, chunk_tokens, tokenizer.pad_id))
        if experiment.retrieval.align_neighbours
        else None,
    )
