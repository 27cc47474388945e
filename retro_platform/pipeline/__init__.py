"""The retrieval pipeline, stage by stage: corpus -> chunks (SQL) -> embeddings -> index ->
neighbours. Each stage reuses what is stored and resumes what was interrupted; this module only
puts them in order for the commands (``ingest``, ``index``, ``search``) and the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from retro_platform.config import Experiment
from retro_platform.corpus.ingest import find_corpus_id, ingest
from retro_platform.embeddings.embed import EmbeddingFile, embed_corpus, embedding_fingerprint
from retro_platform.errors import ConfigError, IndexFileError
from retro_platform.index.build import IndexRecord, build_index, index_fingerprint, open_run_index
from retro_platform.neighbours.compute import NeighbourFile, compute_neighbours
from retro_platform.protocols import MISSING, Embedder
from retro_platform.store.chunks import describe_chunks
from retro_platform.store.models import READY, Corpus, EmbeddingSet, VectorIndex
from retro_platform.store.stages import find_stage

__all__ = ["IndexResult", "SearchHit", "ingest", "run_index", "search"]


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


@dataclass(frozen=True)
class SearchHit:
    score: float
    chunk_id: int
    document: str
    position: int
    text: str


def search(
    experiment: Experiment, store: Any, query: str, k: int, *, embedder: Embedder | None = None
) -> list[SearchHit]:
    """The ``k`` chunks nearest to ``query`` in the experiment's stored index, best first."""
    if k < 1:
        raise ConfigError("-k must be at least 1")
    index = stored_index(experiment, store)
    retriever = open_run_index(experiment, index)
    embedder = embedder or experiment.plugin_table("embedder").build()
    vector = np.asarray(embedder.embed([query]), dtype=np.float32)
    if vector.shape != (1, index.dimension):
        raise ConfigError(
            f"the embedder gives {vector.shape[-1]}-d vectors but index {index.id} holds "
            f"{index.dimension}-d ones (did the model change?); run: retro-platform index "
            f"{experiment.hint_file} --reembed"
        )
    scores, ids = retriever.search(vector, k)
    found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i != MISSING]
    with store.session() as session:
        rows = describe_chunks(session, [i for _, i in found])
    missing = [i for _, i in found if i not in rows]
    if missing:
        raise IndexFileError(
            f"index {index.id} returned chunk ids that are not in SQL (e.g. {missing[0]}); "
            f"run: retro-platform store check {experiment.hint_file}"
        )
    return [SearchHit(score, i, *rows[i]) for score, i in found]


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
