"""Embed every chunk of a corpus, resumably, into a float32 ``.npy`` file beside the store.

The file is ``(chunks, dimension)`` in chunk-id order (row ``i`` is row ``i`` of the corpus's
:class:`~retro_platform.corpus.chunk_table.ChunkTable`). Rows are written in order and the
count of finished rows is committed to SQL every few seconds, after the file is flushed
(:class:`~retro_platform.store.stages.Progress`), so a killed run resumes at the last committed
row and never trusts a row that was not flushed.

Beside it, ``<file>.ids.npy`` holds the chunk id of every row, written before the set turns
ready. When the corpus changed since a finished set (documents added, replaced or removed: a new
corpus version), the new set is derived from the newest finished one by the same embedder
(:func:`embedding_lineage`): a chunk it already holds is copied, only the others are embedded.
Chunk ids are never reused, so an id names the same text in every version.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from retro_platform.atomic import atomic_destination
from retro_platform.config import Experiment
from retro_platform.errors import ConfigError, StoreError
from retro_platform.progress import progress as progress_bar
from retro_platform.protocols import Embedder
from retro_platform.protocols.checks import checked_vectors
from retro_platform.store.arrays import open_array, resume_array
from retro_platform.store.chunks import count_chunks, read_chunks
from retro_platform.store.fingerprints import fingerprint
from retro_platform.store.locks import building_alone
from retro_platform.store.models import READY, Corpus, EmbeddingSet, StageShard
from retro_platform.store.shards import (
    WHOLE,
    Shard,
    ShardsLeft,
    SliceProgress,
    drop_slices,
    fill_slice,
    finish_merged,
    lay_out_slices,
    merge_slices,
    run_slices,
    stored_slices,
)
from retro_platform.store.stages import (
    Progress,
    get_or_create_stage,
    is_ready,
    restart,
    stage_file,
)

#: What repairs a damaged embedding file.
_FIX = "retro-platform index EXPERIMENT.toml --reembed"


@dataclass(frozen=True)
class EmbeddingFile:
    """A finished embedding set: where its vectors are and what they are."""

    id: int
    fingerprint: str
    path: Path
    dimension: int
    count: int
    normalized: bool
    #: The plugin that made them, ``{name, distribution, version}`` (None: before the record).
    plugin: dict[str, str] | None = field(default=None, compare=False)

    @classmethod
    def from_row(cls, row: EmbeddingSet, store: Any) -> EmbeddingFile:
        return cls(
            row.id,
            row.fingerprint,
            store.path(row.file),
            row.dimension,
            row.count,
            row.normalized,
            row.plugin,
        )

    def open(self) -> np.ndarray:
        """The vectors, memory-mapped read-only: ``(count, dimension)`` float32."""
        return open_vectors(self.path, self.count, self.dimension, mode="r")

    @property
    def ids_path(self) -> Path:
        """The file of the chunk id of each row (:func:`chunk_ids_path`)."""
        return chunk_ids_path(self.path)

    def chunk_ids(self) -> np.ndarray:
        """``(count,)`` int64: the chunk id of each row, ascending."""
        return open_array(self.ids_path, (self.count,), np.int64, "chunk-id", _FIX)


def chunk_ids_path(path: Path) -> Path:
    """``embeddings/<key>.ids.npy`` beside ``embeddings/<key>.npy``: the rows' chunk ids."""
    return path.with_name(path.name.removesuffix(".npy") + ".ids.npy")


def embedding_fingerprint(
    experiment: Experiment, corpus: Corpus, version: int | None = None
) -> str:
    """What identifies the embeddings of ``corpus`` at ``version`` (default: its current one)
    by the experiment's embedder: its name and every option but the runtime ones."""
    embedder = experiment.plugin_table("embedder")
    return fingerprint(
        corpus=corpus.fingerprint,
        version=corpus.version if version is None else version,
        embedder=embedder.name,
        options=embedder.stored_options,
    )


def warn_if_made_otherwise(experiment: Experiment, embeddings: EmbeddingFile, what: str) -> None:
    """Say, as a warning line on stderr, that stored ``embeddings`` (``what`` says how they are
    about to be used) were made by another distribution or version of the experiment's
    embedder: uninstalled and replaced, or upgraded, under the same name and options. They are
    used as stored, since the new plugin may compute the same vectors and only the user knows
    whether it does."""
    differs = experiment.plugin_table("embedder").made_otherwise(embeddings.plugin)
    if differs is not None:
        print(
            f"Warning: {what} (embedding set {embeddings.id}) were {differs}: if it computes "
            f"other vectors, embed again: retro-platform index {experiment.hint_file} --reembed",
            file=sys.stderr,
        )


def embedding_lineage(experiment: Experiment, store: Any, corpus_id: int) -> list[EmbeddingFile]:
    """The finished embedding sets of earlier versions of the corpus by the experiment's
    embedder (same name and stored options), newest first: those whose vector and chunk-id
    files are both there. What a changed corpus's stages are derived from."""
    with store.session() as session:
        corpus = session.get(Corpus, corpus_id)
        rows = session.scalars(
            select(EmbeddingSet)
            .where(
                EmbeddingSet.corpus_id == corpus_id,
                EmbeddingSet.status == READY,
                EmbeddingSet.corpus_version < corpus.version,
            )
            .order_by(EmbeddingSet.corpus_version.desc())
        ).all()
        found = [
            EmbeddingFile.from_row(row, store)
            for row in rows
            if row.fingerprint == embedding_fingerprint(experiment, corpus, row.corpus_version)
        ]
    return [item for item in found if item.path.exists() and item.ids_path.exists()]


def embed_corpus(
    experiment: Experiment,
    store: Any,
    corpus_id: int,
    *,
    embedder: Embedder | None = None,
    reembed: bool = False,
    shard: Shard | None = None,
    merge: bool = True,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> EmbeddingFile | ShardsLeft:
    """Embed the corpus's chunks with the experiment's embedder, or reuse a finished set.

    After the corpus changed, the chunks a finished set of an earlier version holds are copied
    from it and only the others are embedded (``log`` says how many of each). ``reembed``
    embeds every chunk again from the first, even when a finished set is stored (for a model
    whose files changed under the same options).

    With ``shard`` (``i/N``) this process embeds only its slice of the chunks
    (:mod:`retro_platform.store.shards`); the process whose slice completes the set merges the
    slices into the set's file (``merge=False``: none does; a later call without ``shard``
    merges, as rank 0 of ``torchrun`` does after a barrier). Until the set is merged the result
    is a :class:`ShardsLeft`; without ``shard`` it is always the finished set (the slices a
    sharded run left are finished here first).
    """
    table = experiment.plugin_table("embedder")
    embedder = embedder or table.build()
    if shard is not None and reembed:
        raise ConfigError(
            "--reembed does not go with --shard: every shard would start the set again; "
            f"run: retro-platform index {experiment.hint_file} --reembed (one process)"
        )
    with store.session() as session:
        corpus = session.get(Corpus, corpus_id)
        key = embedding_fingerprint(experiment, corpus)
        count = count_chunks(session, corpus_id)
        row = get_or_create_stage(
            session,
            EmbeddingSet,
            key,
            corpus_id=corpus_id,
            embedder=table.name,
            embedder_options=table.options,
            plugin=table.source,
            corpus_version=corpus.version,
            dimension=embedder.dimension,
            normalized=embedder.normalized,
            count=count,
            file=stage_file("embeddings", key, ".npy"),
        )
        if row.count != count:  # same corpus version, so the chunks cannot have changed
            raise StoreError(
                f"embedding set {row.id} records {row.count} chunks but corpus {corpus_id} "
                f"has {count}; the store was changed outside retro-platform"
            )
        if reembed:
            restart(row, table.source)
            drop_slices(store, session, EmbeddingSet, row.id)
            row.dimension, row.normalized = embedder.dimension, embedder.normalized
        slices = stored_slices(session, EmbeddingSet, row.id)

    if embedder.dimension != row.dimension:
        raise ConfigError(
            f"embedder {table.name!r} now gives {embedder.dimension}-d vectors but the stored "
            f"embeddings of this corpus are {row.dimension}-d (did the model change?); "
            f"run: retro-platform index {experiment.hint_file} --reembed"
        )
    result = EmbeddingFile.from_row(row, store)
    ready = is_ready(store, row)
    if not reembed:
        done = "reuses" if ready else "resumes"
        warn_if_made_otherwise(experiment, result, f"the embeddings this index {done}")
    if ready:
        if not result.ids_path.exists() and row.corpus_version == corpus.version:
            _save_chunk_ids(store, row.corpus_id, result.ids_path)  # a set from before the file
        return result
    base = None if reembed else _base(experiment, store, corpus_id, row.dimension)
    if shard is None and not slices:
        with building_alone(store, EmbeddingSet, row.id, f"embeddings {row.id}", log) as now:
            if not is_ready(store, now):  # else another process embedded them meanwhile
                _fill(store, now, embedder, base, progress)
    else:
        if not slices:
            if row.done:
                raise StoreError(
                    f"embeddings {row.id} were started without --shard ({row.done} of "
                    f"{row.count} chunks done): finish them in one process with: "
                    f"retro-platform index {experiment.hint_file}"
                )
            # slices of whole embedder batches: each shard embeds exactly the batches that
            # one process would, so the merged file is byte for byte the one-process file
            slices = lay_out_slices(store, EmbeddingSet, row, embedder.batch_size, shard.count)

        def fill_slice(piece: StageShard) -> bool:
            return _fill_slice(store, row, piece, embedder, base, progress)

        slices, merging = run_slices(
            store, EmbeddingSet, row.id, slices, shard or WHOLE, fill_slice, "embeddings", log
        )
        if not (merge and merging):
            return ShardsLeft(
                "embeddings",
                row.id,
                slices[0].shards,
                tuple(piece.shard for piece in slices if piece.status != READY),
            )
        with building_alone(store, EmbeddingSet, row.id, f"embeddings {row.id}", log) as now:
            if not is_ready(store, now):  # else another process merged them meanwhile
                _merge(store, now, slices)
    if log is not None and base is not None:
        # the set's counts, not this call's: a resumed run or the shard that merges did part
        copied = int(np.isin(result.chunk_ids(), base.chunk_ids(), assume_unique=True).sum())
        embedded = row.count - copied
        log(
            f"embeddings {row.id}: {copied} chunks copied from embeddings {base.id}, "
            f"{embedded} embedded (corpus version {row.corpus_version})"
        )
    return result


def _base(
    experiment: Experiment, store: Any, corpus_id: int, dimension: int
) -> EmbeddingFile | None:
    """The newest finished set of an earlier corpus version to copy vectors from, or None."""
    for candidate in embedding_lineage(experiment, store, corpus_id):
        if candidate.dimension == dimension:
            warn_if_made_otherwise(experiment, candidate, "the earlier version's embeddings copied")
            return candidate
    return None


def open_vectors(path: Path, count: int, dimension: int, mode: str = "r") -> np.ndarray:
    """Open an embedding file, checking that it holds ``(count, dimension)`` float32."""
    return open_array(path, (count, dimension), np.float32, "embedding", _FIX, mode)


def _fill(
    store: Any,
    row: EmbeddingSet,
    embedder: Embedder,
    base: EmbeddingFile | None,
    progress: bool | None,
) -> None:
    """Write rows ``done .. count`` of the file, committing progress as it goes: copied from
    ``base`` where it holds the chunk, else embedded.

    The chunk-id file is written before the row turns ready."""
    count, dimension = row.count, row.dimension
    path = store.path(row.file)
    vectors, done = resume_array(path, (count, dimension), np.float32, row.done, "embedding", _FIX)
    saved = Progress(store, EmbeddingSet, row.id, vectors)
    bar = progress_bar(total=count, initial=done, unit="chunk", desc="embed", enabled=progress)
    with bar:
        _embed_rows(store, row, embedder, base, vectors, 0, done, saved, bar)
    _save_chunk_ids(store, row.corpus_id, chunk_ids_path(path), count)
    saved.finish(count)


def _fill_slice(
    store: Any,
    row: EmbeddingSet,
    piece: StageShard,
    embedder: Embedder,
    base: EmbeddingFile | None,
    progress: bool | None,
) -> bool:
    """Write the rows of one slice into its own file, committing the slice's progress; returns
    whether finishing it completed the set."""

    def fill(vectors: np.ndarray, done: int, saved: SliceProgress, bar: Any) -> None:
        _embed_rows(store, row, embedder, base, vectors, piece.start, done, saved, bar)

    return fill_slice(store, EmbeddingSet, row.id, piece, (row.dimension,), np.float32,
                      "embedding", _FIX, "embed", progress, fill)  # fmt: skip


def _embed_rows(
    store: Any,
    row: EmbeddingSet,
    embedder: Embedder,
    base: EmbeddingFile | None,
    vectors: np.ndarray,
    first: int,
    done: int,
    saved: Progress,
    bar: Any,
) -> None:
    """Fill ``vectors`` (the set's rows from ``first`` on) from its row ``done`` to its end,
    one embedder batch at a time: copied from ``base`` where it holds the chunk, else embedded."""
    total, dimension = len(vectors), row.dimension
    if base is not None:
        base_ids, base_vectors = base.chunk_ids(), base.open()
    with store.session() as reading:
        columns = ("id", "text") if base is not None else ("text",)
        blocks = read_chunks(
            reading,
            row.corpus_id,
            *columns,
            block=embedder.batch_size,
            offset=first + done,
            limit=total - done,
        )
        for rows in blocks:
            target = vectors[done : done + len(rows)]
            if base is None:
                batch = [text for (text,) in rows]
            else:
                ids = np.fromiter((chunk_id for chunk_id, _ in rows), np.int64, len(rows))
                known = np.searchsorted(base_ids, ids).clip(max=max(len(base_ids) - 1, 0))
                have = base_ids[known] == ids if len(base_ids) else np.zeros(len(ids), bool)
                target[have] = base_vectors[known[have]]
                batch = [text for (_, text), old in zip(rows, have, strict=True) if not old]
            if batch:
                embedded = checked_vectors(
                    row.embedder, embedder.embed(batch), len(batch), dimension
                )
                if base is None:
                    target[:] = embedded
                else:
                    target[~have] = embedded
            done += len(rows)
            bar.update(len(rows))
            saved.update(done)
    if done != total:
        raise StoreError(
            f"embedding set {row.id}: {first + done} of {first + total} chunks found; "
            f"the store changed while embedding, run the command again"
        )


def _merge(store: Any, row: EmbeddingSet, slices: list[StageShard]) -> None:
    """Copy the finished slices into the set's file, write its chunk ids, mark it ready."""
    path = store.path(row.file)
    shape = (row.count, row.dimension)
    merge_slices(store, slices, path, shape, np.float32, "embedding", _FIX)
    _save_chunk_ids(store, row.corpus_id, chunk_ids_path(path), row.count)
    finish_merged(store, EmbeddingSet, row, slices)


def _save_chunk_ids(store: Any, corpus_id: int, path: Path, count: int | None = None) -> None:
    """Write the corpus's chunk ids in id order (the rows of its embedding files) to ``path``."""
    with store.session() as session:
        ids = [chunk_id for rows in read_chunks(session, corpus_id, "id") for (chunk_id,) in rows]
    if count is not None and len(ids) != count:
        raise StoreError(
            f"{len(ids)} chunks found where {count} were embedded; "
            f"the store changed while embedding, run the command again"
        )
    then = "it resumes: the embedded rows are kept"
    with atomic_destination(path, then) as partial, open(partial, "wb") as handle:
        np.save(handle, np.asarray(ids, dtype=np.int64))
