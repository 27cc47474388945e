"""Every chunk's ``k`` nearest neighbours in the retrieval database, resumably, into a file.

The file is an int64 ``(chunks, k)`` array of chunk ids, row ``i`` for the ``i``-th chunk in
id order, best first. With ``exclude_same_document`` a chunk never gets a neighbour from its own
document (the paper's rule; otherwise the model learns to copy the rest of the document). A
neighbour that cannot be found — fewer than ``k`` candidates survive the exclusion in the whole
database — is :data:`~retro_platform.protocols.MISSING` (``-1``): padding for the model, never a
stand-in chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retro_platform.config import Experiment
from retro_platform.corpus.chunk_table import ChunkTable, load_chunk_table
from retro_platform.embeddings.embed import EmbeddingFile
from retro_platform.errors import ConfigError, StoreError
from retro_platform.index.build import IndexRecord, index_lineage
from retro_platform.progress import progress as progress_bar
from retro_platform.protocols import MISSING, Retriever
from retro_platform.protocols.checks import checked_search, unknown_ids_error
from retro_platform.store.arrays import open_array, resume_array
from retro_platform.store.fingerprints import fingerprint
from retro_platform.store.locks import building_alone
from retro_platform.store.models import READY, NeighbourSet, StageShard
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
    find_stage,
    get_or_create_stage,
    is_ready,
    restart,
    stage_file,
)

#: Queries per search call, and the first candidate count per wanted neighbour.
QUERY_BATCH = 2048
FIRST_CANDIDATES = 4

#: What repairs a damaged neighbour file.
_FIX = "retro-platform index EXPERIMENT.toml --rebuild"


@dataclass(frozen=True)
class NeighbourFile:
    id: int
    fingerprint: str
    path: Path
    k: int
    exclusion: str
    count: int

    def open(self) -> np.ndarray:
        """``(count, k)`` int64 chunk ids, memory-mapped read-only."""
        return open_neighbours(self.path, self.count, self.k)


def find_neighbours(
    retriever: Retriever,
    queries: np.ndarray,
    query_documents: np.ndarray | None,
    table: ChunkTable,
    k: int,
    *,
    name: str = "retriever",
) -> np.ndarray:
    """The ``k`` nearest chunk ids of each query, skipping chunks of ``query_documents``.

    Args:
        queries: ``(q, dimension)`` float32.
        query_documents: ``(q,)`` the document each query must not retrieve from, or None.
        table: the chunk table that maps retrieved ids to their documents.
        name: the retriever's registered name, for the error when its answer breaks the
            protocol (a wrong shape, ids it never stored).
    Returns:
        ``(q, k)`` int64, ``-1`` where fewer than ``k`` candidates remain.
    """
    result = np.full((len(queries), k), MISSING, dtype=np.int64)
    pending = np.arange(len(queries))
    candidates = k if query_documents is None else FIRST_CANDIDATES * k
    while len(pending):
        candidates = min(candidates, retriever.size)
        found = retriever.search(np.ascontiguousarray(queries[pending]), candidates)
        _, ids = checked_search(name, found, len(pending), candidates)
        usable = ids != MISSING
        try:
            rows = table.rows_of(ids)
        except KeyError:
            raise unknown_ids_error(name, ids, table.chunk_ids) from None
        if query_documents is not None:
            documents = np.where(usable, table.document_ids[rows.clip(min=0)], -1)
            usable &= documents != query_documents[pending, None]
        first = np.argsort(~usable, axis=1, kind="stable")[:, :k]  # usable ones, nearest first
        chosen = np.take_along_axis(ids, first, axis=1)
        chosen[~np.take_along_axis(usable, first, axis=1)] = MISSING
        if chosen.shape[1] < k:  # the whole database is smaller than k
            chosen = np.pad(chosen, ((0, 0), (0, k - chosen.shape[1])), constant_values=MISSING)
        result[pending] = chosen
        short_rows = (chosen == MISSING).any(axis=1)
        if candidates >= retriever.size or not short_rows.any():
            break
        pending = pending[short_rows]  # widen the search only for the queries that ran short
        candidates *= 4
    return result


def compute_neighbours(
    experiment: Experiment,
    store: Any,
    corpus_id: int,
    embeddings: EmbeddingFile,
    index: IndexRecord,
    retriever: Retriever,
    *,
    rebuild: bool = False,
    shard: Shard | None = None,
    merge: bool = True,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> NeighbourFile | ShardsLeft:
    """Compute (or reuse) the neighbour set of every chunk of the corpus.

    A new set after a corpus change is derived from the set of an earlier version (see the
    module docstring; ``log`` says how many rows were kept and searched); ``rebuild``
    searches every chunk again.

    With ``shard`` (``i/N``) this process searches only its slice of the queries, and the
    slices are merged as :func:`~retro_platform.embeddings.embed.embed_corpus` merges its
    (``merge=False``: by a later call without ``shard``); until then the result is a
    :class:`ShardsLeft`. Without ``shard`` it is always the finished set.
    """
    k = experiment.retrieval.neighbours
    exclusion = "same-document" if experiment.retrieval.exclude_same_document else "none"
    key = neighbours_fingerprint(experiment, index)
    source = experiment.plugin_table("retriever").source
    if shard is not None and rebuild:
        raise ConfigError(
            "--rebuild and --recompute-neighbours do not go with --shard: every shard would "
            f"start the set again; run: retro-platform index {experiment.hint_file} --rebuild "
            "(one process)"
        )
    with store.session() as session:
        row = get_or_create_stage(
            session,
            NeighbourSet,
            key,
            vector_index_id=index.id,
            k=k,
            exclusion=exclusion,
            count=embeddings.count,
            file=stage_file("neighbours", key, ".npy"),
            plugin=source,
        )
        if rebuild:
            restart(row, source)
            drop_slices(store, session, NeighbourSet, row.id)
        table = load_chunk_table(session, corpus_id)
        slices = stored_slices(session, NeighbourSet, row.id)

    path = store.path(row.file)
    record = NeighbourFile(row.id, key, path, k, exclusion, embeddings.count)
    if is_ready(store, row):
        return record
    search = _Search(
        retriever,
        embeddings.open(),
        table,
        k,
        table.document_ids if exclusion == "same-document" else None,
        None if rebuild else _base(experiment, store, corpus_id, k, exclusion),
        index.retriever,
    )
    shape = (embeddings.count, k)
    if shard is None and not slices:
        with building_alone(store, NeighbourSet, row.id, f"neighbours {row.id}", log) as now:
            if not is_ready(store, now):  # else another process searched them meanwhile
                _search_all(store, now, path, shape, search, progress)
    else:
        if not slices:
            if row.done:
                raise StoreError(
                    f"neighbours {row.id} were started without --shard ({row.done} of "
                    f"{row.count} chunks done): finish them in one process with: "
                    f"retro-platform index {experiment.hint_file}"
                )
            # slices of whole query blocks: each shard searches exactly the blocks that one
            # process would (a block's answers can depend on its size, e.g. Faiss's flat
            # search switches to BLAS from 20 queries), so the merged file is the same bytes
            slices = lay_out_slices(store, NeighbourSet, row, QUERY_BATCH, shard.count)

        def search_slice(piece: StageShard) -> bool:
            return search.slice(store, row.id, piece, progress)

        slices, merging = run_slices(
            store, NeighbourSet, row.id, slices, shard or WHOLE, search_slice, "neighbours", log
        )
        if not (merge and merging):
            return ShardsLeft(
                "neighbours",
                row.id,
                slices[0].shards,
                tuple(piece.shard for piece in slices if piece.status != READY),
            )
        with building_alone(store, NeighbourSet, row.id, f"neighbours {row.id}", log) as now:
            if not is_ready(store, now):  # else another process merged them meanwhile
                merge_slices(store, slices, path, shape, np.int64, "neighbour", _FIX)
                finish_merged(store, NeighbourSet, now, slices)
    if log is not None and search.base is not None:
        # the set's counts, not this call's: a resumed run or the shard that merges did part
        kept = int((search.kept_rows >= 0).sum())
        searched = embeddings.count - kept
        log(
            f"neighbours {row.id}: {kept} chunks kept their "
            f"neighbours, {searched} searched (new chunks, or a neighbour was removed); "
            "--recompute-neighbours searches every chunk again"
        )
    return record


def _search_all(
    store: Any,
    row: NeighbourSet,
    path: Path,
    shape: tuple[int, int],
    search: _Search,
    progress: bool | None,
) -> None:
    """Search rows ``done ..`` of the set in one process, committing progress as it goes."""
    out, done = resume_array(path, shape, np.int64, row.done, "neighbour", _FIX)
    saved = Progress(store, NeighbourSet, row.id, out)
    bar = progress_bar(
        total=shape[0], initial=done, unit="chunk", desc="neighbours", enabled=progress
    )
    with bar:
        search.rows(out, 0, done, saved, bar)
    saved.finish(shape[0])


@dataclass
class _Search:
    """The neighbour search of a set's rows, block by block, keeping rows of ``base`` (an
    earlier version's chunk ids and neighbours) where they are still right."""

    retriever: Retriever
    vectors: np.ndarray
    table: ChunkTable
    k: int
    exclude: np.ndarray | None
    base: tuple[np.ndarray, np.ndarray] | None
    name: str = "retriever"  # registered name, for messages

    def __post_init__(self) -> None:
        self.kept_rows = None if self.base is None else _kept(*self.base, self.table)

    def rows(self, out: np.ndarray, first: int, done: int, saved: Progress, bar: Any) -> None:
        """Fill ``out`` (the set's rows from ``first`` on) from its row ``done`` to its end,
        committing progress: rows of ``base`` kept where still right, the others searched."""
        end = first + len(out)
        for start in range(first + done, end, QUERY_BATCH):
            stop = min(start + QUERY_BATCH, end)
            search = np.arange(start, stop)
            target = out[start - first : stop - first]
            if self.base is not None:
                old = self.kept_rows[start:stop]
                have = old >= 0
                target[have] = self.base[1][old[have]]
                search = search[~have]
            if len(search):
                documents = None if self.exclude is None else self.exclude[search]
                target[search - start] = find_neighbours(
                    self.retriever,
                    self.vectors[search],
                    documents,
                    self.table,
                    self.k,
                    name=self.name,
                )
            bar.update(stop - start)
            saved.update(stop - first)

    def slice(self, store: Any, set_id: int, piece: StageShard, progress: bool | None) -> bool:
        """Search one slice into its own file; returns whether finishing the slice completed
        the set."""

        def fill(out: np.ndarray, done: int, saved: SliceProgress, bar: Any) -> None:
            self.rows(out, piece.start, done, saved, bar)

        return fill_slice(store, NeighbourSet, set_id, piece, (self.k,), np.int64,
                          "neighbour", _FIX, "neighbours", progress, fill)  # fmt: skip


def neighbours_fingerprint(experiment: Experiment, index: IndexRecord) -> str:
    """What identifies the experiment's neighbour set over ``index``: ``k``, the exclusion and
    the retriever's options but its runtime ones (the index's fingerprint leaves the
    search-time ones out too; the neighbours depend on them)."""
    return fingerprint(
        index=index.fingerprint,
        search=experiment.plugin_table("retriever").result_options,
        k=experiment.retrieval.neighbours,
        exclusion="same-document" if experiment.retrieval.exclude_same_document else "none",
    )


def _base(
    experiment: Experiment, store: Any, corpus_id: int, k: int, exclusion: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """The chunk ids and neighbours of the newest finished set of an earlier corpus version
    to keep rows from, or None."""
    for embeddings, index in index_lineage(experiment, store, corpus_id):
        with store.session() as session:
            row = find_stage(session, NeighbourSet, neighbours_fingerprint(experiment, index))
            if row is None or not is_ready(store, row):
                continue
            path, count = store.path(row.file), row.count
        if count == embeddings.count:
            return embeddings.chunk_ids(), open_neighbours(path, count, k)
    return None


def _kept(base_ids: np.ndarray, base_neighbours: np.ndarray, table: ChunkTable) -> np.ndarray:
    """``(chunks,)`` the base row whose neighbours each chunk keeps, ``-1`` where it must be
    searched: a chunk the base does not cover, one with a neighbour no longer stored, or one
    that found fewer than ``k`` (the database has grown since)."""
    rows = np.searchsorted(base_ids, table.chunk_ids).clip(max=max(len(base_ids) - 1, 0))
    covered = base_ids[rows] == table.chunk_ids if len(base_ids) else np.zeros(len(table), bool)
    neighbours = np.asarray(base_neighbours)
    alive = np.isin(neighbours, table.chunk_ids).all(axis=1)
    return np.where(covered & alive[rows], rows, -1)


def open_neighbours(path: Path, count: int, k: int, mode: str = "r") -> np.ndarray:
    """Open a neighbour file, checking that it holds ``(count, k)`` int64."""
    return open_array(path, (count, k), np.int64, "neighbour", _FIX, mode)
