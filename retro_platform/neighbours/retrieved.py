"""The tokens RETRO's encoder reads for a neighbour: the chunk plus its continuation.

The paper's neighbour is ``[N, F]``: the retrieved chunk and the chunk that follows it in the
same document, ``2m`` tokens. At a document's end the continuation is padding, and a missing
neighbour (``-1``) is padding throughout; the model masks padding.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from retro_platform.store.chunks import read_chunks


def load_chunk_tokens(session: Session, corpus_id: int, chunk_size: int, pad_id: int) -> np.ndarray:
    """``(chunks, chunk_size)`` int32 token ids in chunk-id order; short chunks padded."""
    blocks = []
    for rows in read_chunks(session, corpus_id, "token_ids"):
        block = np.full((len(rows), chunk_size), pad_id, dtype=np.int32)
        for i, (blob,) in enumerate(rows):
            ids = np.frombuffer(blob, dtype="<i4")
            block[i, : len(ids)] = ids
        blocks.append(block)
    return np.concatenate(blocks) if blocks else np.empty((0, chunk_size), dtype=np.int32)


def neighbour_tokens(
    tokens: np.ndarray, continuation: np.ndarray, neighbour_rows: np.ndarray, pad_id: int
) -> np.ndarray:
    """Tokens of neighbours plus continuations.

    Args:
        tokens: ``(chunks, m)`` int32, from :func:`load_chunk_tokens`.
        continuation: ``(chunks,)`` row of each chunk's successor in its document, or ``-1``
            (:meth:`ChunkTable.continuation_rows`).
        neighbour_rows: rows of the neighbours (any shape ``(..., k)``), ``-1`` for missing.
    Returns:
        ``(..., k, 2m)`` int32.
    """
    m = tokens.shape[1]
    padded = np.concatenate([tokens, np.full((1, m), pad_id, dtype=tokens.dtype)])
    blank = len(tokens)  # the row of padding that -1 points to
    first = np.where(neighbour_rows < 0, blank, neighbour_rows)
    following = np.where(neighbour_rows < 0, -1, continuation[first.clip(max=blank - 1)])
    second = np.where(following < 0, blank, following)
    return np.concatenate([padded[first], padded[second]], axis=-1)
