"""How much a validation chunk overlaps the neighbours its predictions were given.

Overlap of a chunk: the longest run of consecutive tokens that the chunk shares with any one of
the neighbours that condition it, those retrieved with the chunk before it (see
:mod:`retro_platform.evaluation.bpb`; each neighbour is the retrieved chunk plus its
continuation, ``2m`` tokens), divided by the chunk's length in non-pad tokens. Padding never
matches, and a run never spans two neighbours. 1.0 means the whole chunk is in the retrieval
database; 0 that not one token of it is.
"""

from __future__ import annotations

import math

import numpy as np

#: Bound on the elements of one block's match tensor (chunks x neighbours x m x (m + 2m)).
_BLOCK_ELEMENTS = 1 << 22


def longest_common_runs(chunks: np.ndarray, neighbours: np.ndarray, pad_id: int) -> np.ndarray:
    """Longest run of consecutive tokens each chunk shares with any one of its neighbours.

    Args:
        chunks: ``(c, m)`` token ids.
        neighbours: ``(c, k, r)`` token ids of each chunk's neighbours (``r = 2m``).
        pad_id: the padding id, which never matches.
    Returns:
        ``(c,)`` int64 run lengths, ``0 .. m``.

    A common run is a stretch of one diagonal of the ``(m, r)`` match matrix. The matrix is
    sheared so that every diagonal becomes a column; a column's longest run of matches then
    comes from the running maximum of the positions of its non-matches, for all chunks at once.
    """
    chunks, neighbours = np.asarray(chunks), np.asarray(neighbours)
    c, m = chunks.shape
    if neighbours.ndim != 3 or neighbours.shape[0] != c:
        raise ValueError(f"neighbours must be ({c}, k, r), got {neighbours.shape}")
    k, r = neighbours.shape[1:]
    out = np.zeros(c, dtype=np.int64)
    if c == 0 or k == 0 or m == 0 or r == 0:
        return out
    diagonals = m + r - 1
    # diagonal d at chunk position i meets neighbour position j = i + d - (m - 1)
    i = np.arange(m)[:, None]
    j = i + np.arange(diagonals)[None, :] - (m - 1)  # (m, diagonals)
    inside = (j >= 0) & (j < r)
    j = j.clip(0, r - 1)
    position = np.arange(1, m + 1, dtype=np.int32)[:, None]  # 1-based, (m, 1)
    block = max(1, _BLOCK_ELEMENTS // (k * m * diagonals))
    for start in range(0, c, block):
        a = chunks[start : start + block]  # (B, m)
        sheared = neighbours[start : start + block][:, :, j]  # (B, k, m, diagonals)
        match = (sheared == a[:, None, :, None]) & inside & (a != pad_id)[:, None, :, None]
        # the 1-based position of the latest non-match at or before each i (0: none yet)
        last_break = np.maximum.accumulate(np.where(match, 0, position), axis=2)
        out[start : start + block] = (position - last_break).max(axis=(1, 2, 3))
    return out


def overlap_ratios(chunks: np.ndarray, neighbours: np.ndarray, pad_id: int) -> np.ndarray:
    """``(c,)`` float64 overlap of each chunk with its neighbours: the longest common run over
    the chunk's non-pad tokens (NaN for a chunk of padding only)."""
    lengths = (np.asarray(chunks) != pad_id).sum(axis=1)
    runs = longest_common_runs(chunks, neighbours, pad_id)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, runs / np.maximum(lengths, 1), math.nan)
