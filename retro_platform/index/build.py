"""Build (or reuse) the experiment's vector index over the retrieval database.

The retrieval database is every chunk of the documents not held out for validation
(``[retrieval] validation_fraction``), so a validation chunk can never retrieve itself or its
own document. The index file is written under a temporary name and renamed into place, and its
row turns ``ready`` only after that: a killed build leaves nothing that looks finished.

After the corpus changed (a new corpus version, so new embeddings and a new index record), the
index is derived from the newest finished index of an earlier version with the same retriever
and options (:func:`index_lineage`): it is loaded, the vectors of chunks that are gone are
removed, the new chunks' vectors added, and the result written as the new version's file. The
earlier file is never changed. A retriever that cannot add or remove
(``NotImplementedError``, e.g. ``faiss-hnsw`` removing) is rebuilt instead, and the log says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retro_platform.atomic import atomic_destination
from retro_platform.config import Experiment
from retro_platform.corpus.chunk_table import ChunkTable, load_chunk_table, validation_documents
from retro_platform.embeddings.embed import EmbeddingFile, embedding_lineage
from retro_platform.errors import IndexFileError
from retro_platform.plugins import build_plugin
from retro_platform.progress import chosen, heartbeat
from retro_platform.protocols import Retriever, VectorRows
from retro_platform.store.fingerprints import fingerprint
from retro_platform.store.locks import building_alone
from retro_platform.store.models import VectorIndex
from retro_platform.store.stages import (
    find_stage,
    finish,
    get_or_create_stage,
    is_ready,
    stage_file,
)


@dataclass(frozen=True)
class IndexRecord:
    """A finished vector index: its row, file and the retriever that reads it."""

    id: int
    fingerprint: str
    retriever: str
    options: dict[str, Any]
    path: Path
    dimension: int
    count: int

    @classmethod
    def from_row(cls, row: VectorIndex, store: Any) -> IndexRecord:
        return cls(
            row.id,
            row.fingerprint,
            row.retriever,
            row.retriever_options,
            store.path(row.file),
            row.dimension,
            row.count,
        )


def index_fingerprint(experiment: Experiment, embeddings: EmbeddingFile) -> str:
    """What identifies the experiment's index over ``embeddings``: the retriever, every option
    but the search-time ones, and the validation split (held-out chunks are left out)."""
    retriever = experiment.plugin_table("retriever")
    return fingerprint(
        embeddings=embeddings.fingerprint,
        retriever=retriever.name,
        options=retriever.stored_options,
        validation_fraction=experiment.retrieval.validation_fraction,
    )


def index_lineage(
    experiment: Experiment, store: Any, corpus_id: int
) -> list[tuple[EmbeddingFile, IndexRecord]]:
    """The finished indexes of earlier versions of the corpus by the experiment's embedder and
    retriever (same stored options and validation split), newest first, with the embedding
    set each was built over: what a changed corpus's index is derived from."""
    found = []
    with store.session() as session:
        for embeddings in embedding_lineage(experiment, store, corpus_id):
            row = find_stage(session, VectorIndex, index_fingerprint(experiment, embeddings))
            if row is not None and is_ready(store, row):
                found.append((embeddings, IndexRecord.from_row(row, store)))
    return found


def database_rows(table: ChunkTable, held_out: np.ndarray) -> np.ndarray:
    """Rows of the chunk table that make up the retrieval database (held-out documents out)."""
    return np.flatnonzero(~np.isin(table.document_ids, held_out))


def build_index(
    experiment: Experiment,
    store: Any,
    corpus_id: int,
    embeddings: EmbeddingFile,
    *,
    rebuild: bool = False,
    progress: bool | None = None,
    log: Any = print,
) -> IndexRecord:
    """The experiment's index over ``embeddings``: reused when built, else built now.
    ``progress`` is the ``--progress`` choice, which the retriever's own bars follow."""
    plugin = experiment.plugin_table("retriever")
    fraction = experiment.retrieval.validation_fraction
    key = index_fingerprint(experiment, embeddings)
    retriever: Retriever = plugin.build(embeddings.dimension)
    with store.session() as session:
        row = get_or_create_stage(
            session,
            VectorIndex,
            key,
            embedding_set_id=embeddings.id,
            retriever=plugin.name,
            retriever_options=plugin.options,
            plugin=plugin.source,
            validation_fraction=fraction,
            dimension=embeddings.dimension,
            file=stage_file("indexes", key, retriever.file_suffix),
        )
        table = load_chunk_table(session, corpus_id)
        held_out = validation_documents(session, corpus_id, fraction)

    if is_ready(store, row) and not rebuild:
        return IndexRecord.from_row(row, store)
    with building_alone(store, VectorIndex, row.id, f"index {row.id}", log) as now:
        if is_ready(store, now) and not rebuild:
            return IndexRecord.from_row(now, store)  # built meanwhile by another process
        rows = database_rows(table, held_out)
        if len(rows) == 0:
            raise IndexFileError(
                "the retrieval database is empty: every document is held out for validation; "
                "lower [retrieval] validation_fraction"
            )
        started = time.perf_counter()
        bases = [] if rebuild else index_lineage(experiment, store, corpus_id)
        updated = None
        with chosen(progress):  # the retriever's own bars, and the heartbeat, follow --progress
            if bases:
                updated = _update(experiment, row.id, bases[0][1], embeddings, table, rows, log)
            if updated is None:
                log(  # the plugin's build is one call: this line and the one after it frame it
                    f"building {plugin.name} index over {len(rows)} chunks "
                    f"({len(table) - len(rows)} held out, {embeddings.dimension} dimensions)"
                )
                vectors = _vectors(retriever, embeddings, rows)
                with heartbeat(f"building {plugin.name} index"):  # one call: training says nothing
                    retriever.build(vectors, table.chunk_ids[rows])
                updated = retriever
                log(f"built {plugin.name} index over {len(rows)} chunks in {_seconds(started)}")
        then = "it resumes: the embeddings are kept, the index is built again"
        with atomic_destination(store.path(row.file), then) as partial:
            updated.save(partial)
        row = finish(
            store,
            VectorIndex,
            row.id,
            count=int(len(rows)),
            seconds=time.perf_counter() - started,  # this build's: a rebuild starts again
            dimension=embeddings.dimension,  # changes only when the embeddings were redone
            plugin=plugin.source,  # what wrote the file, which a rebuild may have changed
        )
    return IndexRecord.from_row(row, store)


def _vectors(retriever: Retriever, embeddings: EmbeddingFile, rows: np.ndarray) -> Any:
    """The embeddings' ``rows`` as the retriever's ``build`` and ``add`` take them: rows of the
    memory-mapped file, read slice by slice, for one that :attr:`~Retriever.reads_in_blocks`
    (memory stays bounded); else one array."""
    vectors = embeddings.open()
    if retriever.reads_in_blocks:
        return VectorRows(vectors, rows)
    return np.ascontiguousarray(vectors[rows])


def _seconds(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def _update(
    experiment: Experiment,
    index_id: int,
    base: IndexRecord,
    embeddings: EmbeddingFile,
    table: ChunkTable,
    rows: np.ndarray,
    log: Any,
) -> Retriever | None:
    """The finished index ``base``, loaded and brought up to the database ``rows``: the
    vectors of chunks that are gone removed, those of new chunks added (its file unchanged).
    None (with the reason logged) where the retriever cannot; then the caller rebuilds."""
    loaded = open_index(base, experiment.hint_file, experiment.plugin_table("retriever").options)
    stored = np.asarray(loaded.stored_ids(), dtype=np.int64)
    wanted = table.chunk_ids[rows]
    gone = np.setdiff1d(stored, wanted)
    new_rows = rows[~np.isin(wanted, stored)]
    name = base.retriever
    try:
        removed = loaded.remove(gone) if len(gone) else 0
    except NotImplementedError:
        log(f"{name} cannot remove vectors; rebuilding the index ({len(rows)} vectors)")
        return None
    try:
        if len(new_rows):
            loaded.add(_vectors(loaded, embeddings, new_rows), table.chunk_ids[new_rows])
    except NotImplementedError:
        log(f"{name} cannot add vectors; rebuilding the index ({len(rows)} vectors)")
        return None
    if loaded.size != len(rows):
        raise IndexFileError(
            f"updating index {base.id} left {loaded.size} vectors where {len(rows)} were "
            f"expected; run: retro-platform index {experiment.hint_file} --rebuild"
        )
    log(
        f"index {index_id}: added {len(new_rows)} vectors, removed {removed} "
        f"(no rebuild; from index {base.id})"
    )
    return loaded


def open_index(
    record: IndexRecord,
    experiment_file: str = "EXPERIMENT.toml",
    options: dict[str, Any] | None = None,
) -> Retriever:
    """Load a finished index with the retriever it was built with, and with ``options`` (the
    experiment's current ones, whose runtime options such as a search breadth may differ from
    the build's) or else the options it was built with."""
    options = record.options if options is None else options
    retriever: Retriever = build_plugin(
        "retrievers", {"name": record.retriever, **options}, record.dimension
    )
    rebuild = f"run: retro-platform index {experiment_file} --rebuild"
    if not record.path.exists():
        raise IndexFileError(f"index file {record.path} is missing; {rebuild}")
    try:
        retriever.load(record.path)
    except IndexFileError as error:
        raise IndexFileError(f"{error}; {rebuild}") from None
    if retriever.size != record.count:
        raise IndexFileError(
            f"index file {record.path} holds {retriever.size} vectors, its record says "
            f"{record.count}; {rebuild}"
        )
    return retriever


def open_run_index(experiment: Experiment, record: IndexRecord) -> Retriever:
    """The experiment's finished index, ready to search: loaded with the retriever it was built
    with and the experiment's current options (a search breadth may differ from the build's);
    a missing or damaged file says how to rebuild it."""
    return open_index(record, experiment.hint_file, experiment.plugin_table("retriever").options)
