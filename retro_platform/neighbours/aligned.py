"""Aligned neighbours: the window of a retrieved chunk's document that lines up with the query.

The paper gives the encoder each neighbour as the retrieved chunk plus its continuation, both
cut on the database's chunk grid. Text copied between documents rarely starts on the same grid
position in both, so the token that follows the query's position ``i`` sits somewhere else in
the neighbour for every pair, and a model can only copy it by matching content, which a small
model trained for minutes does not learn (on a copy task where the neighbour's offset varies
it stayed at chance for 800 steps, while the same task with aligned neighbours was solved in
300).

With ``[retrieval] align_neighbours``, each neighbour is instead the ``2m`` tokens of its
document that start at the offset ``delta`` where the most tokens of the query chunk match the
document token for token: the retrieved chunk slid by ``delta`` (``|delta| < m``), followed
by what comes after it. Its position ``i`` then holds the counterpart of the query's token
``i`` and its position ``m + i`` the counterpart of the next chunk's token ``i``, so copying
is a fixed relative position. Only the query chunk's own tokens choose the offset, and the
neighbours of chunk ``u`` only reach positions from ``(u + 1) m - 1`` on, when that chunk is
complete: nothing of the future leaks. Where fewer than :data:`MIN_MATCHES` tokens match at any
offset, the neighbour stays the chunk plus its continuation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retro_platform.corpus.chunk_table import ChunkTable

#: Matching tokens (at least) that make an offset worth taking; fewer keep the chunk grid.
MIN_MATCHES = 4

#: Query chunks aligned per block: bounds the ``(block, 2m - 1, m)`` comparison to tens of MB.
_BLOCK = 2048


@dataclass(frozen=True)
class TokenStream:
    """Every document's tokens end to end, so any window of a document can be cut from it.

    ``tokens`` is the concatenation of the documents (by id) with each document's chunks in
    order; a chunk's padding is left out. ``starts[row]`` is where chunk ``row`` begins in it,
    and ``[first[row], end[row])`` is the span of that chunk's document.
    """

    tokens: np.ndarray  # (total,) int32
    starts: np.ndarray  # (chunks,) int64
    first: np.ndarray  # (chunks,) int64
    end: np.ndarray  # (chunks,) int64
    chunk_size: int

    @classmethod
    def build(cls, table: ChunkTable, chunk_tokens: np.ndarray, pad_id: int) -> TokenStream:
        """From a chunk table and its ``(chunks, m)`` tokens in row order (short chunks padded
        with ``pad_id``)."""
        lengths = (chunk_tokens != pad_id).sum(axis=1).astype(np.int64)
        order = np.lexsort((table.positions, table.document_ids))
        tokens = chunk_tokens[order][
            np.arange(chunk_tokens.shape[1])[None, :] < lengths[order, None]
        ]
        starts = np.empty(len(table), dtype=np.int64)
        starts[order] = np.cumsum(lengths[order]) - lengths[order]
        documents = table.document_ids[order]
        new = np.r_[True, documents[1:] != documents[:-1]] if len(order) else np.empty(0, bool)
        group = np.cumsum(new) - 1  # each row's document, numbered in stream order
        document_first = starts[order][new]
        document_end = np.r_[document_first[1:], len(tokens)]
        first = np.empty(len(table), dtype=np.int64)
        end = np.empty(len(table), dtype=np.int64)
        first[order] = document_first[group]
        end[order] = document_end[group]
        return cls(tokens.astype(np.int32), starts, first, end, chunk_tokens.shape[1])

    def windows(
        self, rows: np.ndarray, offsets: np.ndarray, length: int, pad_id: int
    ) -> np.ndarray:
        """``(..., length)`` tokens from ``starts[rows] + offsets`` on; what lies outside the
        row's document is ``pad_id``, and a row of ``-1`` is all padding."""
        rows = np.asarray(rows, dtype=np.int64)
        real = rows >= 0
        safe = np.where(real, rows, 0)
        if len(self.starts) == 0:
            return np.full((*rows.shape, length), pad_id, dtype=np.int32)
        begin = self.starts[safe] + np.where(real, offsets, 0)
        index = begin[..., None] + np.arange(length)
        inside = (
            (index >= self.first[safe][..., None])
            & (index < self.end[safe][..., None])
            & real[..., None]
        )
        picked = self.tokens[index.clip(0, max(len(self.tokens) - 1, 0))]
        return np.where(inside, picked, pad_id).astype(np.int32)


def alignment_offsets(
    stream: TokenStream,
    queries: np.ndarray,
    neighbour_rows: np.ndarray,
    pad_id: int,
    min_matches: int = MIN_MATCHES,
) -> np.ndarray:
    """The offset that lines each neighbour up with its query chunk.

    Args:
        stream: the corpus's :class:`TokenStream`.
        queries: ``(q, m)`` the query chunks' tokens (padding never matches).
        neighbour_rows: ``(q, k)`` rows of each query's neighbours, ``-1`` for none.
        min_matches: fewer matching tokens than this at the best offset keep offset 0.
    Returns:
        ``(q, k)`` int64 offsets in ``(-m, m)``: the one with the most tokens equal to the
        query's at the same position, the smallest in size among ties; 0 for ``-1``.
    """
    queries = np.asarray(queries)
    neighbour_rows = np.asarray(neighbour_rows, dtype=np.int64)
    q, m = queries.shape
    k = neighbour_rows.shape[1]
    offsets = np.zeros((q, k), dtype=np.int64)
    shifts = np.arange(-(m - 1), m)
    # ties go to the offset nearest 0: order the candidates by size, then argmax takes the first
    by_size = shifts[np.argsort(np.abs(shifts), kind="stable")]
    diagonal = by_size[:, None] + np.arange(m)[None, :]  # (2m - 1, m): region index - (m - 1)
    for start in range(0, q, _BLOCK):
        block = slice(start, start + _BLOCK)
        query = queries[block]
        for slot in range(k):
            rows = neighbour_rows[block, slot]
            region = stream.windows(rows, np.full(len(rows), -(m - 1)), 3 * m - 2, pad_id)
            candidates = region[:, diagonal + (m - 1)]  # (b, 2m - 1, m)
            matches = ((candidates == query[:, None, :]) & (query != pad_id)[:, None, :]).sum(-1)
            best = matches.argmax(axis=1)
            keep = (matches[np.arange(len(rows)), best] >= min_matches) & (rows >= 0)
            offsets[block, slot] = np.where(keep, by_size[best], 0)
    return offsets


def aligned_neighbour_tokens(
    stream: TokenStream, neighbour_rows: np.ndarray, offsets: np.ndarray, pad_id: int
) -> np.ndarray:
    """``(..., k, 2m)`` tokens of each neighbour's window at its offset (padding outside its
    document and for ``-1``); at offset 0 this is the chunk plus its continuation."""
    return stream.windows(neighbour_rows, offsets, 2 * stream.chunk_size, pad_id)
