"""``retro-platform ingest --remove``: take documents out of a corpus by their ids.

The documents and their chunks are deleted from SQL in one transaction and the corpus's version
is bumped, so the next ``retro-platform index`` removes their vectors from the index (Faiss
``remove_ids``, or a reported rebuild where the index type cannot remove) and drops them from
every neighbour list; nothing else is touched. Unknown ids are refused before anything changes.

Removing does not read the corpus: a document the reader still yields comes back with the next
plain ``ingest``. To drop it for good, delete it from the source and run ``ingest --prune``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from retro_platform.config import Experiment
from retro_platform.corpus.ingest import find_corpus_id
from retro_platform.errors import CorpusError, did_you_mean
from retro_platform.store.chunks import count_chunks
from retro_platform.store.documents import delete_documents
from retro_platform.store.locks import lock_corpus
from retro_platform.store.models import Corpus, Document


@dataclass(frozen=True)
class RemovalReport:
    corpus_id: int
    removed: int
    chunks_removed: int
    documents: int  # left in the corpus
    chunks: int
    version: int

    def summary(self) -> str:
        return (
            f"removed {self.removed} documents ({self.chunks_removed} chunks)\n"
            f"corpus {self.corpus_id}: {self.documents} documents, {self.chunks} chunks "
            f"(version {self.version}); run index to update the index"
        )


def remove_documents(
    experiment: Experiment, store: Any, external_ids: Sequence[str]
) -> RemovalReport:
    """Delete the documents with these external ids (as ``search`` shows them) from the
    experiment's corpus; a one-line ``CorpusError`` names an unknown id (nothing is removed)."""
    corpus_id = find_corpus_id(experiment, store)
    wanted = list(dict.fromkeys(external_ids))
    if not wanted:
        raise CorpusError("--remove needs at least one document id")
    with store.session() as session:
        lock_corpus(session, corpus_id)  # against an ingest of the same corpus at this moment
        stored = set(
            session.scalars(select(Document.external_id).where(Document.corpus_id == corpus_id))
        )
        unknown = [external_id for external_id in wanted if external_id not in stored]
        if unknown:
            raise CorpusError(
                f"no document {unknown[0]!r} in corpus {corpus_id}"
                f"{did_you_mean(unknown[0], stored)}; give document ids as `retro-platform "
                f"search` shows them (nothing was removed)"
            )
        if len(wanted) == len(stored):
            raise CorpusError(
                f"removing {len(wanted)} documents would leave corpus {corpus_id} empty "
                "(nothing was removed); point [corpus] at another source instead"
            )
        removed, chunks_removed = delete_documents(session, corpus_id, wanted)
        corpus = session.get(Corpus, corpus_id)
        corpus.version += 1
        documents = session.scalar(
            select(func.count()).select_from(Document).where(Document.corpus_id == corpus_id)
        )
        return RemovalReport(
            corpus_id,
            removed,
            chunks_removed,
            documents,
            count_chunks(session, corpus_id),
            corpus.version,
        )
