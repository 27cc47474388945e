"""Reading chunks from SQL: the one place that knows how a corpus's chunks are found.

The stages read whole columns of a corpus's chunks (ids, documents, positions, token ids,
texts) with :func:`read_chunks`: in chunk-id order, the order of every embedding and neighbour
file's rows, and in blocks, so that no stage holds every row object at once. A few chunks named
by id (search hits, a sample's neighbours) are described by :func:`describe_chunks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from retro_platform.store.models import Chunk, Document

#: Rows per block when a caller names no other size.
BLOCK = 50_000


def read_chunks(
    session: Session,
    corpus_id: int,
    *columns: str,
    block: int = BLOCK,
    offset: int = 0,
    limit: int | None = None,
) -> Iterator[Sequence[Any]]:
    """The named columns of the chunks of ``corpus_id`` in chunk-id order, from the
    ``offset``-th chunk on (``limit`` of them, or all): blocks of at most ``block`` rows, each
    row a tuple of ``columns`` (names of :class:`~retro_platform.store.models.Chunk` columns,
    e.g. ``"token_ids"``)."""
    query = _of_corpus(select(*(getattr(Chunk, name) for name in columns)), corpus_id)
    query = query.order_by(Chunk.id)
    if offset:
        query = query.offset(offset)
    if limit is not None:
        query = query.limit(limit)
    yield from session.execute(query.execution_options(yield_per=block)).partitions()


def count_chunks(session: Session, corpus_id: int) -> int:
    """How many chunks the corpus has."""
    return session.scalar(_of_corpus(select(func.count()).select_from(Chunk), corpus_id))


def describe_chunks(session: Session, chunk_ids: Iterable[int]) -> dict[int, tuple[str, int, str]]:
    """``{chunk id: (document's external id, position, text)}`` of the chunks that exist among
    ``chunk_ids``, in one query."""
    found = session.execute(
        select(Chunk.id, Document.external_id, Chunk.position, Chunk.text)
        .join(Document)
        .where(Chunk.id.in_(list(chunk_ids)))
    )
    return {
        chunk_id: (external_id, position, text) for chunk_id, external_id, position, text in found
    }


def _of_corpus(query: Select[Any], corpus_id: int) -> Select[Any]:
    return query.join(Document).where(Document.corpus_id == corpus_id)
