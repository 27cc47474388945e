"""A corpus's chunks as arrays in chunk-id order: the bridge between SQL rows and vector rows.

Row ``i`` of an embedding file, of a neighbour file and of these arrays is the same chunk.
Loading reads three integer columns once, so later stages never query SQL per chunk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from retro_platform.store.chunks import read_chunks
from retro_platform.store.models import Document

_FETCH = 100_000


@dataclass(frozen=True)
class ChunkTable:
    """Every chunk of a corpus, sorted by id."""

    chunk_ids: np.ndarray  # (chunks,) int64, ascending
    document_ids: np.ndarray  # (chunks,) int64
    positions: np.ndarray  # (chunks,) int64, the chunk's index within its document

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each chunk id (any shape); ``-1`` (a missing neighbour) stays ``-1``.

        Raises:
            KeyError: an id that is not a chunk of this corpus.
        """
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.chunk_ids, ids).clip(max=max(len(self.chunk_ids) - 1, 0))
        missing = ids < 0
        if len(self.chunk_ids) == 0 or not np.all((self.chunk_ids[rows] == ids) | missing):
            raise KeyError("ids that are not chunks of this corpus")
        return np.where(missing, -1, rows)

    def continuation_rows(self) -> np.ndarray:
        """``(chunks,)`` row of the next chunk of the same document, ``-1`` after the last."""
        order = np.lexsort((self.positions, self.document_ids))  # rows by (document, position)
        following = np.full(len(self), -1, dtype=np.int64)
        same = self.document_ids[order[1:]] == self.document_ids[order[:-1]]
        following[order[:-1][same]] = order[1:][same]
        return following


def load_chunk_table(session: Session, corpus_id: int) -> ChunkTable:
    """Read the chunk table of ``corpus_id`` (three integers per chunk)."""
    blocks = read_chunks(session, corpus_id, "id", "document_id", "position", block=_FETCH)
    parts = [np.array(rows, dtype=np.int64).reshape(-1, 3) for rows in blocks]
    table = np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int64)
    return ChunkTable(table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy())


def validation_documents(session: Session, corpus_id: int, fraction: float) -> np.ndarray:
    """Ids of the documents held out for validation: a stable draw by external id, so a
    document stays on its side of the split across runs and ingests."""
    if fraction <= 0:
        return np.empty(0, dtype=np.int64)
    rows = session.execute(
        select(Document.id, Document.external_id).where(Document.corpus_id == corpus_id)
    )
    held_out = [doc_id for doc_id, external_id in rows if is_validation(external_id, fraction)]
    return np.array(sorted(held_out), dtype=np.int64)


def training_documents(
    session: Session, corpus_id: int, validation_fraction: float, document_fraction: float
) -> np.ndarray:
    """Ids of the documents the model trains on: about ``document_fraction`` of those not held
    out, a stable draw by external id like the validation split's (and independent of it).

    The retrieval database holds every document that is not held out; training on a part of
    them makes the database larger than what the model sees, as in the paper. The draw is a
    threshold on a hash, so a smaller fraction's documents are a subset of a larger one's.
    """
    rows = session.execute(
        select(Document.id, Document.external_id).where(Document.corpus_id == corpus_id)
    )
    chosen = [
        doc_id
        for doc_id, external_id in rows
        if not is_validation(external_id, validation_fraction)
        and is_training(external_id, document_fraction)
    ]
    return np.array(sorted(chosen), dtype=np.int64)


def is_validation(external_id: str, fraction: float) -> bool:
    """True for about ``fraction`` of all ids, decided by a hash of the id alone."""
    return _hash_share(external_id) < fraction


def is_training(external_id: str, fraction: float) -> bool:
    """True for about ``fraction`` of all ids, by a hash independent of :func:`is_validation`."""
    return fraction >= 1.0 or _hash_share(external_id, salt=b"training:") < fraction


def _hash_share(external_id: str, salt: bytes = b"") -> float:
    """A number in ``[0, 1)`` that depends on the id alone."""
    digest = hashlib.sha256(salt + external_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
