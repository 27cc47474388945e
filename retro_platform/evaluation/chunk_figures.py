"""One run's per-chunk validation figures, kept in its run folder as ``eval/chunks.npz``: what
a comparison of runs by overlap (:mod:`retro_platform.evaluation.comparison`) is built from,
and the per-chunk part of every :class:`~retro_platform.evaluation.bpb.EvalResult`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from retro_platform.atomic import atomic_destination


@dataclass(frozen=True)
class ChunkFigures:
    """One entry per real chunk (``chunk_rows >= 0``) in evaluation order; padding chunks are
    left out (they have no bytes and, normally, no counted tokens).

    Attributes:
        chunk_rows: ``(chunks,)`` int64 rows of the chunk table.
        chunk_loss: ``(chunks,)`` float64 summed nats of each chunk's positions, retrieval on.
        chunk_loss_off: the same with retrieval off, or None.
        chunk_tokens: ``(chunks,)`` int64 counted positions of each chunk.
        chunk_bytes: ``(chunks,)`` int64 UTF-8 bytes of each chunk.
        chunk_overlap: ``(chunks,)`` float64 longest common token run between each chunk and
            its neighbours over the chunk's length (:func:`~retro_platform.evaluation.overlap.
            overlap_ratios`), or None when the batches carried no neighbours.
    """

    chunk_rows: np.ndarray
    chunk_loss: np.ndarray
    chunk_loss_off: np.ndarray | None
    chunk_tokens: np.ndarray
    chunk_bytes: np.ndarray
    chunk_overlap: np.ndarray | None

    @classmethod
    def of(cls, result: ChunkFigures) -> ChunkFigures:
        """Just the per-chunk figures of ``result`` (an ``EvalResult``, say)."""
        return cls(**{name: getattr(result, name) for name in _FIELDS})

    def save(self, path: str | Path) -> Path:
        """Write the arrays to an ``.npz`` file (those that are None left out), atomically."""
        arrays = {name: getattr(self, name) for name in _FIELDS}
        with atomic_destination(path) as temporary:
            np.savez_compressed(
                temporary, **{name: value for name, value in arrays.items() if value is not None}
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ChunkFigures:
        with np.load(path, allow_pickle=False) as stored:
            return cls(**{name: stored.get(name) for name in _FIELDS})


_FIELDS = tuple(field.name for field in fields(ChunkFigures))
