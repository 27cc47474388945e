"""Deleting documents: the one place that removes a corpus's documents with their chunks.

Chunks are deleted explicitly (SQLite enforces no foreign-key cascade unless asked). Chunk ids
are never reused, so vectors and neighbours computed before still name no other chunk; the
next ``retro-platform index`` removes the deleted chunks' vectors from the index.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from retro_platform.store.models import Chunk, Document

#: External ids per statement (well under every backend's limit on bound parameters).
_BATCH = 500


def delete_documents(
    session: Session, corpus_id: int, external_ids: Iterable[str]
) -> tuple[int, int]:
    """Delete the documents of ``corpus_id`` with these external ids and their chunks, in the
    caller's transaction; ids not stored are ignored. Returns (documents, chunks) deleted."""
    ids = list(dict.fromkeys(external_ids))
    documents = chunks = 0
    for start in range(0, len(ids), _BATCH):
        part = ids[start : start + _BATCH]
        found = select(Document.id).where(
            Document.corpus_id == corpus_id, Document.external_id.in_(part)
        )
        chunks += session.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.document_id.in_(found))
        )
        session.execute(delete(Chunk).where(Chunk.document_id.in_(found)))
        documents += session.execute(
            delete(Document).where(Document.corpus_id == corpus_id, Document.external_id.in_(part))
        ).rowcount
    return documents, chunks
