"""The one retrieval path of a trained run: `search`, autoretrieval during generation and the
run's samples all go through :class:`RunRetrieval`.

A query (a text, or a completed chunk's token ids decoded to text) is embedded by the
experiment's embedder and searched in its finished index; documents named in
``exclude_documents`` never come back. For generation, each neighbour's tokens (the chunk plus
its continuation, or its document's window lined up with the query under ``[retrieval]
align_neighbours``) come from the stored chunk tokens exactly as in training. The chunk tokens
are read once, on the first generation, never for a plain search.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from sqlalchemy import select

from retro_platform.config import Experiment
from retro_platform.corpus.chunk_table import ChunkTable, load_chunk_table
from retro_platform.corpus.ingest import find_corpus_id
from retro_platform.errors import ConfigError, IndexFileError
from retro_platform.index.build import IndexRecord, open_run_index
from retro_platform.neighbours.aligned import (
    TokenStream,
    aligned_neighbour_tokens,
    alignment_offsets,
)
from retro_platform.neighbours.retrieved import load_chunk_tokens, neighbour_tokens
from retro_platform.pipeline import stored_index
from retro_platform.protocols import MISSING, Embedder, Tokenizer
from retro_platform.protocols.checks import checked_search, checked_vectors
from retro_platform.store.chunks import describe_chunks
from retro_platform.store.models import Chunk, Document


@dataclass(frozen=True)
class Neighbour:
    """A retrieved chunk: its id, score (higher is nearer), document, position in the document
    and text (``None`` until described)."""

    chunk_id: int
    score: float
    document: str | None = None
    position: int | None = None
    text: str | None = None


#: What ``retro-platform search`` returns: the same record.
SearchHit = Neighbour


@dataclass(frozen=True)
class Retrieved:
    """The neighbours of ``c`` query chunks: ``tokens`` ``(c, k, r)`` int64 as the model reads
    them (padding for a missing one), ``ids`` ``(c, k)`` int64 chunk ids (``-1``: none) and
    ``scores`` ``(c, k)`` float32."""

    tokens: np.ndarray
    ids: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class ChunkData:
    """The stored chunks a neighbour's tokens are cut from (see :meth:`RunRetrieval.chunk_data`)."""

    table: ChunkTable
    chunk_tokens: np.ndarray  # (chunks, m) int32, chunk-id order
    stream: TokenStream | None = None  # with [retrieval] align_neighbours


class RunRetrieval:
    """Retrieval against the experiment's store and finished index.

    Args:
        index: the index record to search; default: the experiment's finished one.
        embedder, tokenizer: built by the caller when it has them (the tokenizer is needed
            only for generation).
        exclude_documents: external ids of documents never to retrieve from (for
            evaluation); an unknown one is a ``ConfigError``.
        chunk_data: the stored chunks, when the caller has them already (training does).

    Raises:
        IndexFileError: no finished index. ConfigError: the embedder's vectors do not fit it.
    """

    def __init__(
        self,
        experiment: Experiment,
        store: Any,
        *,
        index: IndexRecord | None = None,
        embedder: Embedder | None = None,
        tokenizer: Tokenizer | None = None,
        exclude_documents: Iterable[str] = (),
        chunk_data: ChunkData | None = None,
    ) -> None:
        self.experiment = experiment
        self.store = store
        self.index = index or stored_index(experiment, store)
        self.embedder = embedder or experiment.plugin_table("embedder").build()
        if self.embedder.dimension != self.index.dimension:
            raise ConfigError(
                f"the embedder gives {self.embedder.dimension}-d vectors but index "
                f"{self.index.id} holds {self.index.dimension}-d ones (did the model change?); "
                f"run: retro-platform index {experiment.hint_file} --reembed"
            )
        self.retriever = open_run_index(experiment, self.index)
        self.tokenizer = tokenizer
        self.k = experiment.retrieval.neighbours
        self.excluded = self._excluded_chunks(tuple(exclude_documents))
        if chunk_data is not None:  # fills the cached property below: never read again
            self.__dict__["chunk_data"] = chunk_data

    # -- search -------------------------------------------------------------------------------

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` ``(q, k)`` of the nearest chunks to each vector, best first,
        excluded documents left out; ``-1`` ids where fewer were found."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # asking for as many more as there are excluded chunks still leaves k of the others
        wanted = min(k + len(self.excluded), max(self.retriever.size, k))
        found = self.retriever.search(vectors, wanted)
        scores, ids = checked_search(self.index.retriever, found, len(vectors), wanted)
        if len(self.excluded):
            keep = ~np.isin(ids, self.excluded)
            order = np.argsort(~keep, axis=1, kind="stable")  # kept ones first, in order
            ids = np.where(keep, ids, MISSING)
            ids = np.take_along_axis(ids, order, 1)
            scores = np.take_along_axis(np.where(keep, scores, -np.inf), order, 1)
        if ids.shape[1] < k:
            extra = k - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=MISSING)
            scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
        return scores[:, :k], ids[:, :k]

    def search_texts(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        name = self.experiment.plugin_table("embedder").name
        vectors = checked_vectors(
            name, self.embedder.embed(texts), len(texts), self.index.dimension
        )
        return self.search_vectors(vectors, k)

    def search(self, query: str, k: int) -> list[Neighbour]:
        """The ``k`` chunks nearest to ``query``, best first, described."""
        if k < 1:
            raise ConfigError("-k must be at least 1")
        scores, ids = self.search_texts([query], k)
        return self.described(ids[0], scores[0])

    def described(self, ids: np.ndarray, scores: np.ndarray) -> list[Neighbour]:
        """The found chunks among ``ids`` (``-1`` skipped) with their documents and texts.

        Raises:
            IndexFileError: the index returned an id that is not in SQL (a damaged store).
        """
        found = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i != MISSING]
        with self.store.session() as session:
            rows = describe_chunks(session, [i for i, _ in found])
        missing = [i for i, _ in found if i not in rows]
        if missing:
            raise IndexFileError(
                f"index {self.index.id} returned chunk ids that are not in SQL (e.g. "
                f"{missing[0]}); run: retro-platform store check {self.experiment.hint_file}"
            )
        return [Neighbour(i, score, *rows[i]) for i, score in found]

    def warm_up(self) -> None:
        """Load what the first retrieval would (the embedder's model, the chunk tokens), so
        that a generation's timing is the generation's."""
        self.embedder.embed(["warm-up"])
        if self.tokenizer is not None:
            _ = self.chunk_data

    # -- neighbours for the model ----------------------------------------------------------------

    def __call__(self, chunks: np.ndarray) -> Retrieved:
        """The neighbours of completed chunks ``(c, m)`` (token ids), as the model reads them."""
        chunks = np.asarray(chunks, dtype=np.int64)
        m = self.experiment.retrieval.chunk_size
        if chunks.ndim != 2 or chunks.shape[1] != m:
            raise ValueError(f"chunks must be (c, {m}) token ids, got {chunks.shape}")
        if len(chunks) == 0:
            empty = np.empty((0, self.k), np.int64)
            return Retrieved(
                np.empty((0, self.k, 2 * m), np.int64), empty, empty.astype(np.float32)
            )
        scores, ids = self.search_texts([self._tokenizer.decode(row) for row in chunks], self.k)
        return Retrieved(self.neighbour_tokens(chunks, ids), ids, scores)

    def neighbour_tokens(self, chunks: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``(c, k, 2m)`` int64 tokens of the neighbours ``ids`` of the query ``chunks``, as
        the model was trained on them."""
        data, pad = self.chunk_data, self._tokenizer.pad_id
        rows = data.table.rows_of(ids)
        if data.stream is None:
            continuation = data.table.continuation_rows()
            tokens = neighbour_tokens(data.chunk_tokens, continuation, rows, pad)
        else:
            offsets = alignment_offsets(data.stream, chunks, rows, pad)
            tokens = aligned_neighbour_tokens(data.stream, rows, offsets, pad)
        return tokens.astype(np.int64)

    @cached_property
    def chunk_data(self) -> ChunkData:
        """The corpus's chunk table and tokens, read once."""
        pad = self._tokenizer.pad_id
        corpus_id, m = self.corpus_id, self.experiment.retrieval.chunk_size
        with self.store.session() as session:
            table = load_chunk_table(session, corpus_id)
            tokens = load_chunk_tokens(session, corpus_id, m, pad)
        stream = None
        if self.experiment.retrieval.align_neighbours:
            stream = TokenStream.build(table, tokens, pad)
        return ChunkData(table, tokens, stream)

    @cached_property
    def corpus_id(self) -> int:
        return find_corpus_id(self.experiment, self.store)

    @property
    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("RunRetrieval needs the corpus's tokenizer to retrieve for tokens")
        return self.tokenizer

    def _excluded_chunks(self, documents: tuple[str, ...]) -> np.ndarray:
        if not documents:
            return np.empty(0, np.int64)
        corpus_id = self.corpus_id
        with self.store.session() as session:
            found = dict(
                session.execute(
                    select(Document.external_id, Document.id).where(
                        Document.corpus_id == corpus_id,
                        Document.external_id.in_(documents),
                    )
                ).all()
            )
            unknown = [name for name in documents if name not in found]
            if unknown:
                raise ConfigError(
                    f"--exclude-document {unknown[0]!r} is not a document of this corpus; "
                    "document ids are what `retro-platform search` prints after the score "
                    "(its `document` in --json)"
                )
            ids = session.scalars(select(Chunk.id).where(Chunk.document_id.in_(found.values())))
            return np.fromiter(ids, dtype=np.int64)


class ShuffledRetrieval:
    """The retrieval of a run trained on shuffled neighbours: every completed chunk gets ``k``
    chunks drawn at random from the retrieval database, as in that run's training, instead of
    its nearest ones (scores NaN: nothing was searched)."""

    def __init__(self, base: RunRetrieval, database_rows: np.ndarray, rng: np.random.Generator):
        self.base, self.database_rows, self.rng = base, database_rows, rng

    def __call__(self, chunks: np.ndarray) -> Retrieved:
        chunks = np.asarray(chunks, dtype=np.int64)
        picked = self.rng.integers(len(self.database_rows), size=(len(chunks), self.base.k))
        ids = self.base.chunk_data.table.chunk_ids[self.database_rows[picked]]
        scores = np.full(ids.shape, np.nan, np.float32)
        return Retrieved(self.base.neighbour_tokens(chunks, ids), ids, scores)

    def described(self, ids: np.ndarray, scores: np.ndarray) -> list[Neighbour]:
        return self.base.described(ids, scores)
