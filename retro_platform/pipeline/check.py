"""``retro-platform store check``: do SQL and the files beside it agree?

For every finished vector index: every id in the index is a chunk in SQL, every chunk of the
retrieval database is in the index, no id twice. For every finished embedding and neighbour
set: the file exists with the recorded shape, and every neighbour is a chunk of the corpus (or
``-1``) and, under the same-document rule, never from the query's own document.

Records of an earlier corpus version (superseded by an ingest that added, replaced or removed
documents; kept so that nothing stored is lost) are compared with their files only: the SQL
rows they were computed from may be gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from retro_platform.corpus.chunk_table import load_chunk_table, validation_documents
from retro_platform.embeddings.embed import EmbeddingFile
from retro_platform.errors import RetroPlatformError
from retro_platform.index.build import IndexRecord, database_rows, open_index
from retro_platform.neighbours.compute import open_neighbours
from retro_platform.protocols import MISSING
from retro_platform.store.models import READY, Corpus, EmbeddingSet, NeighbourSet, VectorIndex


@dataclass
class CheckReport:
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(store: Any) -> CheckReport:
    """Compare every finished index, embedding set and neighbour set with SQL."""
    report = CheckReport()
    tables: dict[int, Any] = {}
    with store.session() as session:
        sets = {row.id: row for row in session.scalars(select(EmbeddingSet))}
        indexes = list(session.scalars(select(VectorIndex).order_by(VectorIndex.id)))
        neighbour_sets = list(session.scalars(select(NeighbourSet).order_by(NeighbourSet.id)))
        for corpus_id in {row.corpus_id for row in sets.values()}:
            tables[corpus_id] = load_chunk_table(session, corpus_id)
        versions = {corpus.id: corpus.version for corpus in session.scalars(select(Corpus))}
        superseded = {
            key: row.corpus_version < versions[row.corpus_id] for key, row in sets.items()
        }
        held_out = {
            row.id: validation_documents(
                session, sets[row.embedding_set_id].corpus_id, row.validation_fraction
            )
            for row in indexes
        }
        sets = (
            {
                key: (row.corpus_id, EmbeddingFile.from_row(row), row.status)
                for key, row in sets.items()
            }
            if False
            else sets
        )  # noqa: E501
        embedding_files = {
            key: (row.corpus_id, row.status, EmbeddingFile.from_row(row, store))
            for key, row in sets.items()
        }
        index_records = [(row, IndexRecord.from_row(row, store)) for row in indexes]
        neighbour_rows = [
            (
                row.id,
                row.vector_index_id,
                row.k,
                row.exclusion,
                row.count,
                row.status,
                store.path(row.file),
            )
            for row in neighbour_sets
        ]

    for set_id, (_, status, files) in embedding_files.items():
        if status != READY:
            report.checked.append(f"embedding set {set_id}: unfinished, skipped")
            continue
        _try(report, f"embedding set {set_id}", files.open)

    index_corpus = {}
    for row, record in index_records:
        corpus_id = embedding_files[row.embedding_set_id][0]
        index_corpus[row.id] = corpus_id
        if row.status != READY:
            report.checked.append(f"index {row.id}: unfinished, skipped")
            continue
        retriever = _try(report, f"index {row.id}", open_index, record)
        if retriever is None:
            continue
        if superseded[row.embedding_set_id]:
            report.checked.append(f"index {row.id}: of an earlier corpus version, file only")
            continue
        table = tables[corpus_id]
        expected = table.chunk_ids[database_rows(table, held_out[row.id])]
        stored = np.asarray(retriever.stored_ids(), dtype=np.int64)
        unknown = np.setdiff1d(stored, table.chunk_ids)
        missing = np.setdiff1d(expected, stored)
        extra = np.setdiff1d(stored, expected)
        twice = len(stored) - len(np.unique(stored))
        name = f"index {row.id} ({row.retriever}, {len(stored)} vectors)"
        for count, what in (
            (len(unknown), "ids that are no chunk in SQL"),
            (len(missing), "chunks of the retrieval database missing from the index"),
            (len(extra) - len(unknown), "held-out chunks in the index"),
            (twice, "ids stored twice"),
        ):
            if count:
                report.problems.append(f"{name}: {count} {what}")
        report.checked.append(name)

    index_sets = {row.id: row.embedding_set_id for row, _ in index_records}
    for set_id, index_id, k, exclusion, count, status, path in neighbour_rows:
        if status != READY:
            report.checked.append(f"neighbour set {set_id}: unfinished, skipped")
            continue
        neighbours = _try(report, f"neighbour set {set_id}", open_neighbours, path, count, k)
        if neighbours is None:
            continue
        if superseded[index_sets[index_id]]:
            report.checked.append(
                f"neighbour set {set_id}: of an earlier corpus version, file only"
            )
            continue
        table = tables[index_corpus[index_id]]
        ids = np.asarray(neighbours)
        found = ids != MISSING
        known = np.isin(ids[found], table.chunk_ids)
        if not known.all():
            report.problems.append(
                f"neighbour set {set_id}: {int((~known).sum())} neighbours are no chunk in SQL"
            )
        elif exclusion == "same-document":
            rows = table.rows_of(np.where(found, ids, MISSING))
            own = table.document_ids[:, None] == table.document_ids[rows.clip(min=0)]
            if (own & found).any():
                report.problems.append(
                    f"neighbour set {set_id}: {int((own & found).sum())} neighbours from the "
                    "query's own document"
                )
        share = 1 - found.mean() if ids.size else 0.0
        report.checked.append(f"neighbour set {set_id} (k={k}, {share:.1%} missing)")
    return report


def _try(report: CheckReport, name: str, load: Any, *args: Any) -> Any:
    """``load(*args)``, or None with the error recorded as a problem of ``name``."""
    try:
        return load(*args)
    except RetroPlatformError as error:
        report.problems.append(f"{name}: {error}")
        return None
