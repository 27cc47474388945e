"""``retro-platform store stats``: what the store holds, and how big it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from retro_platform.store.models import (
    Chunk,
    Corpus,
    Document,
    EmbeddingSet,
    NeighbourSet,
    VectorIndex,
)


def file_size(path: Path) -> int | None:
    """Bytes of a file, or of the files in a folder (an index of several files), or None when
    it does not exist."""
    try:
        if path.is_dir():
            return sum(file.stat().st_size for file in path.iterdir() if file.is_file())
        return path.stat().st_size
    except FileNotFoundError:
        return None


def made_by(plugin: dict[str, str] | None) -> str:
    """``distribution version`` of the plugin that made a stored result, or ``unknown`` (made
    before stores recorded it)."""
    if not plugin:
        return "unknown"
    return f"{plugin.get('distribution', '?')} {plugin.get('version', '?')}"


def store_stats(store: Any) -> dict[str, Any]:
    """Counts and sizes of everything stored, JSON-ready."""
    with store.session() as session:
        documents = dict(
            session.execute(
                select(Document.corpus_id, func.count()).group_by(Document.corpus_id)
            ).all()
        )
        tokens = dict(
            session.execute(
                select(Document.corpus_id, func.sum(Document.num_tokens)).group_by(
                    Document.corpus_id
                )
            ).all()
        )
        chunks = dict(
            session.execute(
                select(Document.corpus_id, func.count())
                .select_from(Chunk)
                .join(Document)
                .group_by(Document.corpus_id)
            ).all()
        )
        corpora = [
            {
                "id": corpus.id,
                "reader": corpus.reader,
                "tokenizer": corpus.tokenizer,
                "chunk_size": corpus.chunk_size,
                "version": corpus.version,
                "documents": documents.get(corpus.id, 0),
                "chunks": chunks.get(corpus.id, 0),
                "tokens": int(tokens.get(corpus.id) or 0),
                "updated": corpus.updated_at.isoformat(timespec="seconds"),
            }
            for corpus in session.scalars(select(Corpus).order_by(Corpus.id))
        ]
        embeddings = [
            {
                "id": row.id,
                "corpus": row.corpus_id,
                "embedder": row.embedder,
                "dimension": row.dimension,
                "chunks": f"{row.done}/{row.count}",
                "status": row.status,
                "bytes": file_size(store.path(row.file)),
                "seconds": round(row.seconds or 0.0, 1),
                "made_by": made_by(row.plugin),
            }
            for row in session.scalars(select(EmbeddingSet).order_by(EmbeddingSet.id))
        ]
        indexes = [
            {
                "id": row.id,
                "embeddings": row.embedding_set_id,
                "retriever": row.retriever,
                "vectors": row.count,
                "status": row.status,
                "bytes": file_size(store.path(row.file)),
                "seconds": round(row.seconds or 0.0, 1),
                "made_by": made_by(row.plugin),
            }
            for row in session.scalars(select(VectorIndex).order_by(VectorIndex.id))
        ]
        neighbours = [
            {
                "id": row.id,
                "index": row.vector_index_id,
                "k": row.k,
                "exclusion": row.exclusion,
                "chunks": f"{row.done}/{row.count}",
                "status": row.status,
                "bytes": file_size(store.path(row.file)),
                "made_by": made_by(row.plugin),
            }
            for row in session.scalars(select(NeighbourSet).order_by(NeighbourSet.id))
        ]
    return {
        "url": store.url,
        "data_dir": str(store.data_dir),
        "corpora": corpora,
        "embedding_sets": embeddings,
        "vector_indexes": indexes,
        "neighbour_sets": neighbours,
    }
