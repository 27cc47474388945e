"""``retro-platform store prune``: give back the disk of earlier corpus versions.

After ``ingest`` adds, changes or removes documents, ``index`` builds the new version's
embeddings, index and neighbours from the earlier version's and keeps those: nothing stored is
lost, and every update adds a full copy of each. This removes the records, and the files, of
earlier versions that no update needs any more.

A record of an earlier version (superseded: its corpus has a newer version) is kept when it
is the newest finished one of its **lineage** and the current version has no finished record
of that lineage yet: the next ``index`` derives from it (copies its vectors, updates its index,
keeps its neighbours). A lineage is what the stages match on: an embedding set's embedder and
options; an index's embedding lineage, retriever, options and validation split; a neighbour
set's index lineage, ``k`` and exclusion. Keeping a neighbour set keeps its index, and keeping
an index keeps its embedding set, which its update reads. A record of an earlier version that
never finished is no one's base and goes. Records of the current version are never touched.

The lineage is matched on the records' columns, which leave out a few things fingerprints
hold (a neighbour set's search breadth, the plugins' versions): where two experiments differ
only in those, the second may lose its base and build its next version from scratch. The
result is the same; it is slower.

A corpus whose index any process is working on (the index-work lock,
:mod:`retro_platform.store.locks`), or that a training run reads (its evaluation and samples
open the index it was trained with again: the index-read lock, held until ``done.json``), is
left alone and named. Removal is resumable: the records
are first marked ``removing`` (no stage uses them from then on), then their files go, then
the rows; a prune killed midway finishes on its next run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from retro_platform.embeddings.embed import chunk_ids_path
from retro_platform.store.locks import (
    build_lock_name,
    nobody_reading,
    nobody_working,
    remove_lock_file,
)
from retro_platform.store.models import (
    READY,
    Corpus,
    EmbeddingSet,
    NeighbourSet,
    StageShard,
    VectorIndex,
)
from retro_platform.store.shards import stored_slices
from retro_platform.store.stats import file_size

#: The status of a record being removed: no stage reads or builds on it any more.
REMOVING = "removing"

_KINDS = ((NeighbourSet, "neighbours"), (VectorIndex, "index"), (EmbeddingSet, "embeddings"))


@dataclass(frozen=True)
class PrunedRecord:
    """One record of an earlier corpus version that goes, with its files."""

    kind: str  # "embeddings", "index" or "neighbours": its table, as _KINDS names it
    row_id: int
    corpus_id: int
    corpus_version: int
    files: tuple[Path, ...]
    bytes: int

    @property
    def what(self) -> str:
        """``embeddings 3``, ``index 5``, ``neighbours 4``: the record as messages name it."""
        return f"{self.kind} {self.row_id}"


@dataclass
class PrunePlan:
    """What :func:`prune` removes, what it keeps and why, and the corpora it left alone."""

    removed: list[PrunedRecord] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # one line each: the record and why
    busy: list[int] = field(default_factory=list)  # corpora a process is indexing
    in_use: list[int] = field(default_factory=list)  # corpora a training run reads

    @property
    def bytes(self) -> int:
        return sum(record.bytes for record in self.removed)


def prune(store: Any, *, dry_run: bool = False) -> PrunePlan:
    """Remove the records and files of earlier corpus versions that no update needs (see the
    module docstring); with ``dry_run``, only say what would go. Corpus by corpus, each under
    its index-work lock taken exclusively: a corpus being indexed is skipped."""
    plan = PrunePlan()
    with store.session() as session:
        corpora = list(session.scalars(select(Corpus).order_by(Corpus.id)))
    for corpus in corpora:
        with nobody_working(store, corpus.id) as nobody, nobody_reading(store, corpus.id) as unread:
            if not nobody:
                plan.busy.append(corpus.id)
                continue
            if not unread:
                plan.in_use.append(corpus.id)
                continue
            removed, kept = _plan_corpus(store, corpus.id)
            plan.removed += removed
            plan.kept += kept
            if not dry_run:
                _remove(store, removed)
    return plan


def _plan_corpus(store: Any, corpus_id: int) -> tuple[list[PrunedRecord], list[str]]:
    """The records of the corpus's earlier versions that go, and those kept as bases."""
    with store.session() as session:
        version = session.get(Corpus, corpus_id).version
        sets = {
            row.id: row
            for row in session.scalars(
                select(EmbeddingSet).where(EmbeddingSet.corpus_id == corpus_id)
            )
        }
        indexes = {
            row.id: row
            for row in session.scalars(
                select(VectorIndex).where(VectorIndex.embedding_set_id.in_(sets))
            )
        }
        neighbour_sets = {
            row.id: row
            for row in session.scalars(
                select(NeighbourSet).where(NeighbourSet.vector_index_id.in_(indexes))
            )
        }
        slices = {
            (kind, row_id): [piece.file for piece in stored_slices(session, kind, row_id)]
            for kind, rows in ((EmbeddingSet, sets), (NeighbourSet, neighbour_sets))
            for row_id in rows
        }

    def set_lineage(row: EmbeddingSet) -> tuple:
        return (row.embedder, _canonical(row.embedder_options))

    def index_lineage(row: VectorIndex) -> tuple:
        return (
            set_lineage(sets[row.embedding_set_id]),
            row.retriever,
            _canonical(row.retriever_options),
            row.validation_fraction,
        )

    def neighbour_lineage(row: NeighbourSet) -> tuple:
        return (index_lineage(indexes[row.vector_index_id]), row.k, row.exclusion)

    def set_version(row: Any) -> int:
        if isinstance(row, NeighbourSet):
            row = indexes[row.vector_index_id]
        if isinstance(row, VectorIndex):
            row = sets[row.embedding_set_id]
        return row.corpus_version

    bases = set()
    for rows, lineage in (
        (sets, set_lineage),
        (indexes, index_lineage),
        (neighbour_sets, neighbour_lineage),
    ):
        bases |= _bases(store, rows.values(), lineage, set_version, version)
    # what a kept record's update reads is kept with it
    for row in [row for row in bases if isinstance(row, NeighbourSet)]:
        bases.add(indexes[row.vector_index_id])
    for row in [row for row in bases if isinstance(row, VectorIndex)]:
        bases.add(sets[row.embedding_set_id])

    removed, kept = [], []
    for model, name in _KINDS:
        rows = {EmbeddingSet: sets, VectorIndex: indexes, NeighbourSet: neighbour_sets}[model]
        for row in sorted(rows.values(), key=lambda row: row.id):
            if set_version(row) >= version:
                continue  # the current version's
            if row in bases:
                kept.append(
                    f"{name} {row.id} (corpus {corpus_id} version {set_version(row)}): the next "
                    f"index of version {version} derives from it"
                )
                continue
            files = [store.path(row.file), *map(store.path, slices.get((model, row.id), []))]
            if model is EmbeddingSet:
                files.append(chunk_ids_path(store.path(row.file)))
            present = tuple(path for path in files if path.exists())
            removed.append(
                PrunedRecord(
                    name,
                    row.id,
                    corpus_id,
                    set_version(row),
                    present,
                    sum(file_size(path) or 0 for path in present),
                )
            )
    return removed, kept


def _bases(
    store: Any, rows: Iterable[Any], lineage: Any, set_version: Any, version: int
) -> set[Any]:
    """Of ``rows``, those an update of ``version`` may still derive from: per lineage with no
    finished record of ``version``, the newest finished earlier one."""
    newest: dict[tuple, Any] = {}
    current = set()
    for row in rows:
        if row.status != READY or not store.path(row.file).exists():
            continue
        key = lineage(row)
        if set_version(row) >= version:
            current.add(key)
        elif key not in newest or set_version(row) > set_version(newest[key]):
            newest[key] = row
    return {row for key, row in newest.items() if key not in current}


def _canonical(options: Any) -> str:
    return json.dumps(options, sort_keys=True)


def _remove(store: Any, records: list[PrunedRecord]) -> None:
    """Mark the records removing, remove their files, then their rows (children first)."""
    if not records:
        return
    ids = {name: [r.row_id for r in records if r.kind == name] for _, name in _KINDS}
    with store.session() as session:
        for model, name in _KINDS:
            if ids[name]:
                session.execute(
                    update(model).where(model.id.in_(ids[name])).values(status=REMOVING)
                )
    for record in records:
        for path in record.files:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    with store.session() as session:
        pieces = list(
            session.scalars(
                select(StageShard.id).where(
                    StageShard.embedding_set_id.in_(ids["embeddings"])
                    | StageShard.neighbour_set_id.in_(ids["neighbours"])
                )
            )
        )
        for piece in pieces:
            remove_lock_file(store, build_lock_name(StageShard, piece))
        session.execute(delete(StageShard).where(StageShard.id.in_(pieces)))
        for model, name in _KINDS:  # neighbour sets, then indexes, then embedding sets
            for row_id in ids[name]:
                row = session.get(model, row_id)
                if row is not None:
                    session.delete(row)
                remove_lock_file(store, build_lock_name(model, row_id))
