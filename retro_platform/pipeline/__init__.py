"""The retrieval pipeline, stage by stage: corpus -> chunks (SQL) -> embeddings -> index ->
neighbours. Each stage reuses what is stored and resumes what was interrupted; this module only
puts them in order for the commands (``ingest``, ``index``) and the runner, and finds the
finished index that ``search`` and generation read (:func:`stored_index`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from retro_platform.config import Experiment
from retro_platform.corpus.ingest import find_corpus_id, ingest
from retro_platform.embeddings.embed import (
    EmbeddingFile,
    embed_corpus,
    embedding_fingerprint,
    warn_if_made_otherwise,
)
from retro_platform.errors import ConfigError, IndexFileError, StoreError
from retro_platform.index.build import IndexRecord, build_index, index_fingerprint, open_run_index
from retro_platform.neighbours.compute import NeighbourFile, compute_neighbours
from retro_platform.store.locks import working_alone, working_on_index
from retro_platform.store.models import READY, Corpus, EmbeddingSet, VectorIndex
from retro_platform.store.shards import Shard, ShardsLeft
from retro_platform.store.stages import find_stage, is_ready

__all__ = [
    "IndexResult",
    "Shard",
    "ShardResult",
    "ShardsLeft",
    "ingest",
    "refuse_rebuild_in_shards",
    "finished_index",
    "run_index",
    "stored_index",
]


@dataclass(frozen=True)
class IndexResult:
    corpus_id: int
    embeddings: EmbeddingFile
    index: IndexRecord
    neighbours: NeighbourFile


@dataclass(frozen=True)
class ShardResult:
    """What one shard's ``run_index`` left to others: the embeddings' slices, the index (built
    by the shard that completed the embeddings) or the neighbours' slices."""

    shard: Shard
    embeddings: EmbeddingFile | ShardsLeft
    neighbours: ShardsLeft | None = None

    def summary(self, hint_file: str) -> str:
        """What this shard did and what to run next, in a line or two."""
        again = f"retro-platform index {hint_file} --shard {self.shard}"
        plain = f"retro-platform index {hint_file}"
        if isinstance(self.embeddings, ShardsLeft):
            return self.embeddings.summary(
                self.shard,
                "the shard that finishes last merges them and builds the index; then run "
                f"`{again}` again to search this shard's neighbours (or run `{plain}` once "
                "every shard is done: it merges, builds the index and searches them all)",
            )
        if self.neighbours is None:
            return (
                f"embeddings {self.embeddings.id}: done; the index is not built yet (the shard "
                "that completed the embeddings builds it; if that process is gone, "
                f"`{plain}` builds it); run `{again}` again once it is, to search this "
                "shard's neighbours"
            )
        return self.neighbours.summary(
            self.shard,
            "the shard that finishes last merges them (or, once no shard is running, "
            f"`{plain}` finishes what is left and merges)",
        )


def run_index(
    experiment: Experiment,
    store: Any,
    *,
    rebuild: bool = False,
    reembed: bool = False,
    recompute_neighbours: bool = False,
    shard: Shard | None = None,
    barrier: Callable[[], None] | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> IndexResult | ShardResult:
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

    With ``shard`` (``Shard(i, N)``, one of ``N`` processes on any machines sharing the store):
    this process embeds its slice of the chunks; the process that completes the embeddings
    merges them and builds the index (one process: Faiss trains and adds); a shard that finds
    the index built searches its slice of the neighbours, and the one that completes them
    merges them. The result is the finished :class:`IndexResult` once all of it is done, else
    a :class:`ShardResult` that says what is left. The merged files are the bytes one process
    writes (see :mod:`retro_platform.store.shards`).

    With ``barrier`` as well (every rank of a ``torchrun`` job calls this with
    ``Shard(rank, world_size)`` and a callable that returns once every rank has called it,
    e.g. ``torch.distributed.barrier``): the ranks embed their slices, wait, rank 0 merges and
    builds the index, wait, all search their slices of the neighbours, wait, rank 0 merges
    them, wait; every rank returns the finished :class:`IndexResult`.

    Every call holds the corpus's index-work lock shared while it works
    (:func:`~retro_platform.store.locks.working_on_index`), so that a waiting shard can tell
    whether the process that should finish a set is still at it
    (:mod:`retro_platform.pipeline.shard_wait`). With ``rebuild``, ``reembed`` or
    ``recompute_neighbours`` it holds it exclusively, and a ``StoreError`` says so at once
    when another process is at work: they start sets over that it may be building.
    """
    if shard is not None and (rebuild or reembed or recompute_neighbours):
        refuse_rebuild_in_shards(experiment.hint_file)
    if barrier is not None and shard is None:
        raise ValueError("run_index(barrier=...) needs shard=Shard(rank, world_size)")
    corpus_id = find_corpus_id(experiment, store)
    alone = rebuild or reembed or recompute_neighbours
    with _index_work(store, corpus_id, alone, experiment, log):
        if barrier is not None:
            return _run_index_in_ranks(experiment, store, corpus_id, shard, barrier, progress, log)
        return _run_stages(
            experiment,
            store,
            corpus_id,
            rebuild=rebuild or reembed,
            reembed=reembed,
            recompute_neighbours=recompute_neighbours,
            shard=shard,
            progress=progress,
            log=log,
        )


@contextmanager
def _index_work(
    store: Any, corpus_id: int, alone: bool, experiment: Experiment, log: Callable[[str], None]
) -> Iterator[None]:
    """The corpus's index-work lock for one ``run_index``: shared (waiting, and saying so,
    while a process works alone), or exclusive for ``alone`` work (a rebuild starts over sets
    another process may be building: refused while one is at work, in one line)."""
    if not alone:
        with working_on_index(store, corpus_id, log):
            yield
        return
    with working_alone(store, corpus_id) as free:
        if not free:
            raise StoreError(
                "another process is indexing this corpus, and --rebuild, --reembed and "
                "--recompute-neighbours start over what it may be building; run "
                f"retro-platform index {experiment.hint_file} with them once it has finished"
            )
        yield


def _run_stages(
    experiment: Experiment,
    store: Any,
    corpus_id: int,
    *,
    rebuild: bool,
    reembed: bool,
    recompute_neighbours: bool,
    shard: Shard | None,
    progress: bool | None,
    log: Callable[[str], None],
) -> IndexResult | ShardResult:
    """:func:`run_index` in one process, or one shard of several."""
    ready_before = shard is not None and _embeddings_ready(experiment, store, corpus_id)
    embeddings = embed_corpus(
        experiment, store, corpus_id, reembed=reembed, shard=shard, progress=progress, log=log
    )
    if isinstance(embeddings, ShardsLeft):
        return ShardResult(shard, embeddings)
    if ready_before and _stored_index(experiment, store, embeddings) is None:
        return ShardResult(shard, embeddings)  # the shard that merged them builds the index
    index = build_index(
        experiment, store, corpus_id, embeddings, rebuild=rebuild, progress=progress, log=log
    )
    retriever = open_run_index(experiment, index)
    neighbours = compute_neighbours(
        experiment,
        store,
        corpus_id,
        embeddings,
        index,
        retriever,
        rebuild=rebuild or recompute_neighbours,
        shard=shard,
        progress=progress,
        log=log,
    )
    if isinstance(neighbours, ShardsLeft):
        return ShardResult(shard, embeddings, neighbours)
    return IndexResult(corpus_id, embeddings, index, neighbours)


def refuse_rebuild_in_shards(hint_file: str) -> None:
    """The one-line error for ``--rebuild``, ``--reembed`` or ``--recompute-neighbours`` with
    ``--shard``: each shard would start the set again, under the others' feet."""
    raise ConfigError(
        "--rebuild, --reembed and --recompute-neighbours do not go with --shard (each shard "
        f"would start the set again): run retro-platform index {hint_file} with them in one "
        "process"
    )


def _run_index_in_ranks(
    experiment: Experiment,
    store: Any,
    corpus_id: int,
    shard: Shard,
    barrier: Callable[[], None],
    progress: bool | None,
    log: Callable[[str], None],
) -> IndexResult:
    """:func:`run_index` in every rank of one job: slices in parallel, merges and the index on
    rank 0, a barrier between the steps. Every rank calls ``barrier`` four times."""
    first = shard.index == 0
    quiet = log if first else (lambda _: None)  # one copy of each line, not one per rank
    embed_corpus(
        experiment, store, corpus_id, shard=shard, merge=False, progress=progress, log=quiet
    )
    barrier()
    if first:
        embeddings = embed_corpus(experiment, store, corpus_id, progress=progress, log=log)
        index = build_index(experiment, store, corpus_id, embeddings, progress=progress, log=log)
    barrier()
    if not first:  # rank 0 finished both: these read their records
        embeddings = embed_corpus(experiment, store, corpus_id, progress=False)
        index = build_index(experiment, store, corpus_id, embeddings, log=quiet)
    retriever = open_run_index(experiment, index)
    arguments = (experiment, store, corpus_id, embeddings, index, retriever)
    compute_neighbours(*arguments, shard=shard, merge=False, progress=progress, log=quiet)
    barrier()
    if first:
        neighbours = compute_neighbours(*arguments, progress=progress, log=log)
    barrier()
    if not first:
        neighbours = compute_neighbours(*arguments, progress=False)
    return IndexResult(corpus_id, embeddings, index, neighbours)


def _embeddings_ready(experiment: Experiment, store: Any, corpus_id: int) -> bool:
    """Whether the experiment's embeddings of the corpus's current version are finished."""
    with store.session() as session:
        return _ready_embeddings(session, experiment, corpus_id) is not None


def _ready_embeddings(session: Any, experiment: Experiment, corpus_id: int) -> Any:
    """The experiment's finished embedding set of the corpus's current version, or None."""
    corpus = session.get(Corpus, corpus_id)
    row = find_stage(session, EmbeddingSet, embedding_fingerprint(experiment, corpus))
    return row if row is not None and row.status == READY else None


def _stored_index(
    experiment: Experiment, store: Any, embeddings: EmbeddingFile
) -> IndexRecord | None:
    """The experiment's finished index over ``embeddings``, or None."""
    with store.session() as session:
        row = find_stage(session, VectorIndex, index_fingerprint(experiment, embeddings))
        if row is None or not is_ready(store, row):
            return None
        return IndexRecord.from_row(row, store)


def finished_index(experiment: Experiment, store: Any) -> IndexRecord | None:
    """The finished index (its file there) of the experiment's current corpus, embedder and
    retriever, or None. Reads only."""
    corpus_id = find_corpus_id(experiment, store)
    with store.session() as session:
        embedding_set = _ready_embeddings(session, experiment, corpus_id)
    if embedding_set is None:
        return None
    return _stored_index(experiment, store, EmbeddingFile.from_row(embedding_set, store))


def stored_index(experiment: Experiment, store: Any) -> IndexRecord:
    """The finished index of the experiment's current corpus, embedder and retriever."""
    corpus_id = find_corpus_id(experiment, store)
    with store.session() as session:
        embedding_set = _ready_embeddings(session, experiment, corpus_id)
        row = None
        if embedding_set is not None:
            embeddings = EmbeddingFile.from_row(embedding_set, store)
            index_key = index_fingerprint(experiment, embeddings)
            row = find_stage(session, VectorIndex, index_key)
        if row is None or row.status != READY:
            raise IndexFileError(
                "no finished index for this experiment's [embedder] and [retriever]; "
                f"run: retro-platform index {experiment.hint_file}"
            )
        found = IndexRecord.from_row(row, store)
    warn_if_made_otherwise(experiment, embeddings, "the embeddings searched here")
    return found
