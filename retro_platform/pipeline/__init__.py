"""The retrieval pipeline, stage by stage: corpus -> chunks (SQL) -> embeddings -> index ->
neighbours. Each stage reuses what is stored and resumes what was interrupted; this module only
puts them in order for the commands (``ingest``, ``index``) and the runner, and finds the
finished index that ``search`` and generation read (:func:`stored_index`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from retro_platform.config import Experiment
from retro_platform.corpus.ingest import find_corpus_id, ingest
from retro_platform.embeddings.embed import EmbeddingFile, embed_corpus, embedding_fingerprint
from retro_platform.errors import IndexFileError
from retro_platform.index.build import IndexRecord, build_index, index_fingerprint, open_run_index
from retro_platform.neighbours.compute import NeighbourFile, compute_neighbours
from retro_platform.store.models import READY, Corpus, EmbeddingSet, VectorIndex
from retro_platform.store.stages import find_stage

__all__ = ["IndexResult", "ingest", "run_index", "stored_index"]


@dataclass(frozen=True)
class IndexResult:
    corpus_id: int
    embeddings: EmbeddingFile
    index: IndexRecord
    neighbours: NeighbourFile


def run_index(
    experiment: Experiment,
    store: Any,
    *,
    rebuild: bool = False,
    reembed: bool = False,
    recompute_neighbours: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> IndexResult:
    """Embed the ingested corpus, build the vector index, compute every chunk's neighbours.

    After documents were added, replaced or removed (a new corpus version), each stage is
    derived from the previous version's: only new chunks are embedded, the index gets their
    vectors and loses those of removed chunks (no rebuild, no training), and only new chunks
    (and those whose neighbours are gone) are searched for neighbours; ``log`` reports the
    counts. ``recompute_neighbours`` searches every chunk's neighbours again (existing chunks
    may find new documents). ``rebuild`` rebuilds the index and the neighbours from scratch
    even when they are stored; ``reembed`` also embeds every chunk again (embeddings are
    otherwise rebuilt only when their file is missing: an index problem never needs them
    redone).
    """
    rebuild = rebuild or reembed
    corpus_id = find_corpus_id(experiment, store)
    embeddings = embed_corpus(
        experiment, store, corpus_id, reembed=reembed, progress=progress, log=log
    )
    index = build_index(experiment, store, corpus_id, embeddings, rebuild=rebuild, log=log)
    retriever = open_run_index(experiment, index)
    neighbours = compute_neighbours(
        experiment,
        store,
        corpus_id,
        embeddings,
        index,
        retriever,
        rebuild=rebuild or recompute_neighbours,
        progress=progress,
        log=log,
    )
    return IndexResult(corpus_id, embeddings, index, neighbours)


def stored_index(experiment: Experiment, store: Any) -> IndexRecord:
    """The finished index of the experiment's current corpus, embedder and retriever."""
    corpus_id = find_corpus_id(experiment, store)
    with store.session() as session:
        corpus = session.get(Corpus, corpus_id)
        key = embedding_fingerprint(experiment, corpus)
        embedding_set = find_stage(session, EmbeddingSet, key)
        row = None
        if embedding_set is not None and embedding_set.status == READY:
            embeddings = EmbeddingFile.from_row(embedding_set, store)
            index_key = index_fingerprint(experiment, embeddings)
            row = find_stage(session, VectorIndex, index_key)
        if row is None or row.status != READY:
            raise IndexFileError(
                "no finished index for this experiment's [embedder] and [retriever]; "
                f"run: retro-platform index {experiment.hint_file}"
            )
        return IndexRecord.from_row(row, store)
