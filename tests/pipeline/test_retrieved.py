"""The encoder's input: each neighbour chunk followed by its continuation, padding otherwise."""

from __future__ import annotations

import numpy as np

from retro_platform.corpus.chunk_table import ChunkTable
from retro_platform.neighbours.retrieved import neighbour_tokens


def test_neighbour_plus_continuation_with_padding_at_the_end_and_for_missing() -> None:
    # document 7: chunks at rows 0, 2 (positions 0, 1); document 9: rows 1, 3 (positions 0, 1)
    table = ChunkTable(
        chunk_ids=np.array([10, 11, 12, 13]),
        document_ids=np.array([7, 9, 7, 9]),
        positions=np.array([0, 0, 1, 1]),
    )
    continuation = table.continuation_rows()
    assert continuation.tolist() == [2, 3, -1, -1]
    tokens = np.arange(1, 13, dtype=np.int32).reshape(4, 3)  # 3-token chunks, no zeros
    rows = np.array([[0, 2], [3, -1]])  # a chunk with a successor, a last chunk, a missing one
    out = neighbour_tokens(tokens, continuation, rows, pad_id=0)
    assert out.shape == (2, 2, 6)
    assert out[0, 0].tolist() == [1, 2, 3, 7, 8, 9]  # row 0 then its successor row 2
    assert out[0, 1].tolist() == [7, 8, 9, 0, 0, 0]  # last chunk of its document
    assert out[1, 0].tolist() == [10, 11, 12, 0, 0, 0]
    assert out[1, 1].tolist() == [0] * 6  # missing neighbour: all padding


def test_rows_of_maps_ids_and_keeps_missing() -> None:
    table = ChunkTable(np.array([3, 8, 20]), np.array([1, 1, 2]), np.array([0, 1, 0]))
    assert table.rows_of(np.array([[20, -1], [3, 8]])).tolist() == [[2, -1], [0, 1]]
