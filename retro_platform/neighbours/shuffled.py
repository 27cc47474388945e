"""Shuffled neighbours: the control that shows where retrieval's gain comes from.

Each chunk keeps as many neighbours as it retrieved, but every one is replaced by a chunk drawn
at random from another document of the retrieval database. A model trained and evaluated on
them has the same parameters and reads inputs of the same shapes as one given its retrieved
neighbours, only with no relevant text: what the retrieved run gains over it is what the
retrieved text is worth, not the extra capacity of the encoder and the cross-attention.
"""

from __future__ import annotations

import numpy as np

#: Draws before the chunks still unmatched are settled one by one (a database of few documents).
_ROUNDS = 32


def shuffled_neighbours(
    neighbour_rows: np.ndarray, document_ids: np.ndarray, database_rows: np.ndarray, seed: int
) -> np.ndarray:
    """Random stand-ins for retrieved neighbours.

    Args:
        neighbour_rows: ``(chunks, k)`` rows of the retrieved neighbours, ``-1`` for none.
        document_ids: ``(chunks,)`` the document of every row.
        database_rows: the rows the retrieval database holds (never a held-out document's).
        seed: the same seed gives the same neighbours.
    Returns:
        ``(chunks, k)`` int64: every real neighbour replaced by a database row of another
        document than its chunk's, drawn uniformly; ``-1`` stays ``-1`` (and a chunk whose
        document is the whole database gets ``-1``).
    """
    neighbour_rows = np.asarray(neighbour_rows, dtype=np.int64)
    database_rows = np.asarray(database_rows, dtype=np.int64)
    out = np.full_like(neighbour_rows, -1)
    if len(database_rows) == 0:
        return out
    rng = np.random.default_rng([seed % 2**64, 0x5AFF1E])
    k = neighbour_rows.shape[1]
    slots = np.flatnonzero(neighbour_rows.ravel() >= 0)  # flat (chunk, slot) positions to fill
    owners = document_ids[slots // k]
    for _ in range(_ROUNDS):
        if len(slots) == 0:
            return out
        drawn = database_rows[rng.integers(len(database_rows), size=len(slots))]
        good = document_ids[drawn] != owners
        out.ravel()[slots[good]] = drawn[good]
        slots, owners = slots[~good], owners[~good]
    for slot, owner in zip(slots, owners, strict=True):  # rare: draw among the others directly
        others = database_rows[document_ids[database_rows] != owner]
        if len(others):
            out.ravel()[slot] = others[rng.integers(len(others))]
    return out
