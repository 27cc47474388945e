"""The SQL side of the retrieval store: what was ingested, embedded, indexed and retrieved.

Text and metadata live here; vectors, index files and neighbour arrays live in files beside the
database (paths relative to the store folder), each recorded by a row with its options and its
status. A chunk's primary key is the id stored in the vector index, so SQL and Faiss always
speak about the same chunk.

Rows that describe derived data (embedding sets, vector indexes, neighbour sets) share the
columns of :class:`StageRecord`, among them a ``fingerprint``: a hash of everything that
determines their content. A stage that finds a row with its fingerprint and status ``ready`` has
nothing to do; a ``building`` row is resumed (:mod:`retro_platform.store.stages`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Constraint names that are the same on every backend, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: SQLite makes only an ``INTEGER PRIMARY KEY`` an alias of its rowid (auto-increment).
Id = BigInteger().with_variant(Integer(), "sqlite")

#: Status of derived data: being written (resumable) or complete.
BUILDING = "building"
READY = "ready"


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Corpus(Base):
    """A corpus as the platform sees it: a reader's documents cut by one tokenizer into chunks
    of one size. Changing any of those makes a new corpus beside the old one."""

    __tablename__ = "corpora"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    reader: Mapped[str] = mapped_column(String(200))
    reader_options: Mapped[dict[str, Any]] = mapped_column(JSON)
    tokenizer: Mapped[str] = mapped_column(String(200))
    tokenizer_options: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: a trained tokenizer's file, relative to the store folder (None when it needs none)
    tokenizer_file: Mapped[str | None] = mapped_column(String(1024))
    vocab_size: Mapped[int] = mapped_column(Integer)
    pad_id: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    #: bumped by every ingest that adds or replaces documents; derived data records the
    #: version it was computed from, so it is known to be stale afterwards
    version: Mapped[int] = mapped_column(Integer, default=0)
    #: the last ingest's counts (read, added, unchanged, replaced, skipped by reason)
    last_ingest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now
    )

    documents: Mapped[list[Document]] = relationship(
        back_populates="corpus", cascade="all, delete-orphan", passive_deletes=True
    )


class Document(Base):
    """One document of a corpus; ``checksum`` (SHA-256 of its bytes) makes ingest idempotent."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("corpus_id", "external_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(1024))
    checksum: Mapped[str] = mapped_column(String(64))
    num_bytes: Mapped[int] = mapped_column(BigInteger)
    num_tokens: Mapped[int] = mapped_column(BigInteger)
    num_chunks: Mapped[int] = mapped_column(Integer)
    #: what the reader knew about the document (``SourceDocument.metadata``, e.g. a package's
    #: version); SQL NULL when it said nothing. Not ``metadata``: the declarative base owns it
    meta: Mapped[dict[str, str] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    corpus: Mapped[Corpus] = relationship(back_populates="documents")
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True
    )


class Chunk(Base):
    """``chunk_size`` consecutive tokens of a document (the last chunk may be shorter).

    ``id`` is the id in every vector index. ``token_ids`` holds the ids as little-endian int32
    bytes; ``text`` is the document's text from this chunk's first token to the next chunk's.
    """

    __tablename__ = "chunks"
    # ids are never reused (SQLite would reuse the highest after a delete): an index file
    # built earlier must never name a different chunk with an old id
    __table_args__ = (UniqueConstraint("document_id", "position"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    token_start: Mapped[int] = mapped_column(BigInteger)
    token_end: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)

    document: Mapped[Document] = relationship(back_populates="chunks")


#: ``sort_order`` of a stage table's columns, so each table keeps the column order it was created
#: with: its id, its parent's id (``_PARENT``), the fingerprint, its own columns (0), then
#: count, done, file, status, seconds and created_at, then any it adds later (``_LATER``).
_PARENT, _LATER = -1, 4


class StageRecord:
    """The columns of every stage's record (:mod:`retro_platform.store.stages`): the result's
    ``fingerprint``, its ``file`` (relative to the store folder) holding ``count`` items, its
    ``status`` and the ``seconds`` spent building it."""

    id: Mapped[int] = mapped_column(Id, primary_key=True, sort_order=-2)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True, sort_order=_PARENT)
    count: Mapped[int] = mapped_column(BigInteger, default=0, sort_order=1)
    file: Mapped[str] = mapped_column(String(1024), sort_order=3)
    status: Mapped[str] = mapped_column(String(20), default=BUILDING, sort_order=3)
    seconds: Mapped[float] = mapped_column(Float, default=0.0, sort_order=3)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, sort_order=3
    )
    #: The plugin that made the result, ``{"name", "distribution", "version"}`` (the embedder
    #: of an embedding set, the retriever of an index or neighbour set); NULL when unknown
    #: (made before the column existed).
    plugin: Mapped[dict[str, str] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True, sort_order=_LATER
    )


class ResumableStageRecord(StageRecord):
    """A stage that writes its file's rows in order: the first ``done`` are on disk, so an
    interrupted build resumes there."""

    done: Mapped[int] = mapped_column(BigInteger, default=0, sort_order=2)


class EmbeddingSet(ResumableStageRecord, Base):
    """The embeddings of every chunk of a corpus (at ``corpus_version``) by one embedder.

    ``file`` is a float32 ``(count, dimension)`` array in chunk-id order.
    """

    __tablename__ = "embedding_sets"

    corpus_id: Mapped[int] = mapped_column(
        ForeignKey("corpora.id", ondelete="CASCADE"), sort_order=_PARENT
    )
    embedder: Mapped[str] = mapped_column(String(200))
    embedder_options: Mapped[dict[str, Any]] = mapped_column(JSON)
    corpus_version: Mapped[int] = mapped_column(Integer)
    dimension: Mapped[int] = mapped_column(Integer)
    normalized: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now, sort_order=_LATER
    )


class VectorIndex(StageRecord, Base):
    """A retriever's index over the retrieval database: the embeddings of the chunks of the
    documents not held out for validation (``count`` of them)."""

    __tablename__ = "vector_indexes"

    embedding_set_id: Mapped[int] = mapped_column(
        ForeignKey("embedding_sets.id", ondelete="CASCADE"), sort_order=_PARENT
    )
    retriever: Mapped[str] = mapped_column(String(200))
    retriever_options: Mapped[dict[str, Any]] = mapped_column(JSON)
    validation_fraction: Mapped[float] = mapped_column(Float)
    dimension: Mapped[int] = mapped_column(Integer)


class NeighbourSet(ResumableStageRecord, Base):
    """Every chunk's ``k`` nearest neighbours in a vector index, as chunk ids.

    ``file`` is an int64 ``(count, k)`` array whose row ``i`` belongs to the ``i``-th chunk in
    id order; ``-1`` marks a neighbour that could not be found (padding, never a stand-in).
    ``exclusion`` says which candidates were refused (``same-document`` or ``none``).
    """

    __tablename__ = "neighbour_sets"

    vector_index_id: Mapped[int] = mapped_column(
        ForeignKey("vector_indexes.id", ondelete="CASCADE"), sort_order=_PARENT
    )
    k: Mapped[int] = mapped_column(Integer)
    exclusion: Mapped[str] = mapped_column(String(40))


class StageShard(ResumableStageRecord, Base):
    """One of ``shards`` contiguous slices of an embedding or neighbour set that separate
    processes build at the same time (``retro-platform index --shard i/N``, or the ranks of a
    ``torchrun`` job): rows ``start .. start + count`` of the set, written to a ``file`` of
    its own and copied into the set's file once every slice is ``ready``.

    Exactly one of ``embedding_set_id`` and ``neighbour_set_id`` is set. The slices of a set
    are laid out by the first sharded run and kept until the set is built again.
    """

    __tablename__ = "stage_shards"
    __table_args__ = (
        UniqueConstraint("embedding_set_id", "shard"),
        UniqueConstraint("neighbour_set_id", "shard"),
    )

    embedding_set_id: Mapped[int | None] = mapped_column(
        ForeignKey("embedding_sets.id", ondelete="CASCADE"), nullable=True, sort_order=_PARENT
    )
    neighbour_set_id: Mapped[int | None] = mapped_column(
        ForeignKey("neighbour_sets.id", ondelete="CASCADE"), nullable=True, sort_order=_PARENT
    )
    #: which slice (``0 .. shards - 1``) of how many
    shard: Mapped[int] = mapped_column(Integer)
    shards: Mapped[int] = mapped_column(Integer)
    #: the set's row where the slice begins (a multiple of the batch it was laid out for)
    start: Mapped[int] = mapped_column(BigInteger)
