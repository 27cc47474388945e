"""``retro-platform ingest``: stream a corpus into SQL as documents and chunks.

Documents are read, decoded, tokenized and chunked one batch at a time, and each batch is
committed in one transaction, so memory stays bounded whatever the corpus size and a killed
ingest resumes where it stopped: a document whose ``external_id`` is stored with the same
checksum is skipped (its reader's metadata, such as a package version, is refreshed if that
alone changed). A document whose content changed is replaced (its old chunks go with it).
With ``prune``, stored documents the reader no longer yields (as usable documents) are removed
with their chunks. Every ingest that adds, replaces or removes bumps the corpus's version, and
the next ``retro-platform index`` updates the embeddings, index and neighbours from the last
version's (:mod:`retro_platform.pipeline`); documents named by id are removed by
:mod:`retro_platform.corpus.remove`.
Files that are not UTF-8 or are empty are skipped, counted and reported; they never stop the
run. A corpus that yields no usable document at all is an error.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from retro_platform.atomic import atomic_destination
from retro_platform.config import Experiment
from retro_platform.corpus.chunking import ChunkSpan, iter_chunks
from retro_platform.errors import CorpusError, StoreError
from retro_platform.progress import progress as progress_bar
from retro_platform.protocols import CorpusReader, SourceDocument, Tokenizer
from retro_platform.protocols.checks import checked_documents, checked_encodings
from retro_platform.store.bulk import insert_chunks, insert_documents
from retro_platform.store.chunks import count_chunks
from retro_platform.store.documents import delete_documents
from retro_platform.store.fingerprints import fingerprint, short
from retro_platform.store.locks import lock_corpus
from retro_platform.store.models import Corpus, Document

#: A batch is committed when it holds this many documents or this many bytes, whichever first.
BATCH_DOCUMENTS = 256
BATCH_BYTES = 8 * 2**20

#: How many skipped documents a report names (the counts cover all of them).
EXAMPLES = 5

#: A document about to be stored: its text, checksum, size in bytes and the reader's metadata.
_Candidate = tuple[str, str, int, dict[str, str] | None]


@dataclass
class IngestReport:
    """What one ingest did (also stored as the corpus's ``last_ingest``)."""

    corpus_id: int
    read: int = 0
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    removed: int = 0  # with prune: stored documents the reader no longer yields
    chunks_added: int = 0
    chunks_removed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)
    documents: int = 0  # in the corpus after this ingest
    chunks: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "added": self.added,
            "replaced": self.replaced,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "chunks_added": self.chunks_added,
            "chunks_removed": self.chunks_removed,
            "skipped": dict(self.skipped),
            "skipped_examples": self.skipped_examples,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
        line = (
            f"read {self.read} documents: {self.added} added, {self.replaced} replaced, "
            f"{self.unchanged} unchanged, {skipped} skipped"
        )
        if skipped:
            line += f" ({reasons}; e.g. {'; '.join(self.skipped_examples)})"
        if self.removed:
            line += f"; {self.removed} removed (no longer in the corpus)"
        removed = f", -{self.chunks_removed}" if self.chunks_removed else ""
        return (
            f"{line}\ncorpus {self.corpus_id}: {self.documents} documents, {self.chunks} chunks "
            f"(+{self.chunks_added}{removed}) in {self.seconds:.1f} s"
        )


def check_corpus(experiment: Experiment) -> CorpusReader:
    """The experiment's corpus reader, once its ``check`` passed: a corpus that cannot be read
    at all (a path that does not exist, a package not installed) is a one-line ``ConfigError``
    before any work (``validate`` and ``run`` ask first; ``ingest`` again before reading)."""
    reader: CorpusReader = experiment.plugin_table("corpus").build()
    reader.check()
    return reader


def check_corpora(experiments: list[Experiment]) -> None:
    """:func:`check_corpus` for each distinct ``[corpus]`` table of ``experiments`` (a
    sweep's points mostly share one)."""
    seen = set()
    for experiment in experiments:
        table = experiment.plugin_table("corpus")
        key = (table.name, json.dumps(table.options, sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            check_corpus(experiment)


def ingest(
    experiment: Experiment,
    store: Any,
    *,
    prune: bool = False,
    progress: bool | None = None,
    copy: bool = True,
) -> IngestReport:
    """Ingest the experiment's corpus into ``store``; return what was done.

    Several ingests may write one store at once: each batch's decision and writes hold the
    corpus's lock (:mod:`retro_platform.store.locks`), so every document is stored once.

    Args:
        prune: also remove the stored documents that the reader no longer yields as usable
            documents (never when it yields none: that is an error).
        progress: a progress bar (True), plain progress lines (False), or a bar only on a
            terminal (None; :mod:`retro_platform.progress`).
        copy: on PostgreSQL, write rows with ``COPY`` (False: row inserts, as on SQLite; for
            the benchmark and the tests that compare the two, :mod:`retro_platform.store.bulk`).
    """
    started = time.perf_counter()
    reader = check_corpus(experiment)
    tokenizer: Tokenizer = experiment.plugin_table("tokenizer").build()
    corpus_id = prepare_corpus(experiment, store, reader, tokenizer)
    report = IngestReport(corpus_id)
    chunk_size = experiment.retrieval.chunk_size
    max_bytes = experiment.store.max_document_bytes

    bar = progress_bar(total=reader.count_hint(), unit="doc", desc="ingest", enabled=progress)
    bumped = False
    seen: set[str] = set()
    with bar:
        documents = checked_documents(experiment.plugin_table("corpus").name, reader.documents())
        for batch in _batches(documents):
            changed = _ingest_batch(
                store,
                corpus_id,
                batch,
                tokenizer,
                chunk_size,
                report,
                bumped,
                seen,
                max_bytes,
                copy,
                experiment.plugin_table("tokenizer").name,
            )
            bumped = bumped or changed
            bar.update(len(batch))
            bar.set_postfix(added=report.added, chunks=report.chunks_added, refresh=False)
    if prune and seen:
        _prune(store, corpus_id, seen, report, bumped)

    with store.session() as session:
        corpus = session.get(Corpus, corpus_id)
        report.documents = session.scalar(
            select(func.count()).select_from(Document).where(Document.corpus_id == corpus_id)
        )
        report.chunks = count_chunks(session, corpus_id)
        report.seconds = time.perf_counter() - started
        corpus.last_ingest = report.as_dict()
    if report.documents == 0:
        raise CorpusError(
            f"the corpus ({reader.describe()}) has no usable documents: {report.read} read"
            + (f", skipped {dict(report.skipped)}" if report.skipped else "")
            + "; check the [corpus] table"
        )
    return report


def _prune(store: Any, corpus_id: int, seen: set[str], report: IngestReport, bumped: bool) -> None:
    """Remove the corpus's stored documents whose external ids are not in ``seen``."""
    with store.session() as session:
        lock_corpus(session, corpus_id)
        stored = session.scalars(
            select(Document.external_id).where(Document.corpus_id == corpus_id)
        ).all()
        gone = [external_id for external_id in stored if external_id not in seen]
        if not gone:
            return
        report.removed, report.chunks_removed = delete_documents(session, corpus_id, gone)
        if not bumped:
            session.get(Corpus, corpus_id).version += 1


def prepare_corpus(
    experiment: Experiment, store: Any, reader: CorpusReader, tokenizer: Tokenizer
) -> int:
    """The id of the experiment's corpus row, created if new; the tokenizer trained or loaded.

    A tokenizer that learns from the corpus is trained once, on the corpus's usable texts, and
    saved in the store folder; every later stage (and run) loads that file.
    """
    tokenizer_table = experiment.plugin_table("tokenizer")
    key = corpus_fingerprint(experiment)
    tokenizer_file = None
    if tokenizer.needs_training:
        tokenizer_file = f"tokenizers/{short(key)}.json"
        path = store.path(tokenizer_file)
        if not path.exists():
            documents = checked_documents(
                experiment.plugin_table("corpus").name, reader.documents()
            )
            texts = _usable_texts(documents, experiment.store.max_document_bytes)
            first = next(texts, None)
            if first is None:
                raise CorpusError(
                    f"the corpus ({reader.describe()}) has no usable documents to train the "
                    f"{tokenizer_table.name!r} tokenizer on; check the [corpus] table"
                )
            with atomic_destination(path) as partial:  # a killed training leaves no half file
                tokenizer.train(itertools.chain([first], texts), partial)
        tokenizer.load(path)

    try:
        return _corpus_row(experiment, store, key, tokenizer, tokenizer_file)
    except IntegrityError:  # another ingest created it at the same moment: use that one
        return _corpus_row(experiment, store, key, tokenizer, tokenizer_file)


def _corpus_row(
    experiment: Experiment, store: Any, key: str, tokenizer: Tokenizer, tokenizer_file: str | None
) -> int:
    """The id of the corpus row with fingerprint ``key``, created if there is none."""
    reader_table = experiment.plugin_table("corpus")
    tokenizer_table = experiment.plugin_table("tokenizer")
    with store.session() as session:
        corpus = session.scalar(select(Corpus).where(Corpus.fingerprint == key))
        if corpus is None:
            corpus = Corpus(
                fingerprint=key,
                reader=reader_table.name,
                reader_options=reader_table.options,
                tokenizer=tokenizer_table.name,
                tokenizer_options=tokenizer_table.options,
                tokenizer_file=tokenizer_file,
                vocab_size=tokenizer.vocab_size,
                pad_id=tokenizer.pad_id,
                chunk_size=experiment.retrieval.chunk_size,
                version=0,
            )
            session.add(corpus)
            session.flush()
        return corpus.id


def corpus_fingerprint(experiment: Experiment) -> str:
    """What identifies the experiment's corpus: reader, tokenizer and chunk size, with every
    option of the two plugins but their runtime ones."""
    reader = experiment.plugin_table("corpus")
    tokenizer = experiment.plugin_table("tokenizer")
    return fingerprint(
        reader=reader.name,
        reader_options=reader.stored_options,
        tokenizer=tokenizer.name,
        tokenizer_options=tokenizer.stored_options,
        chunk_size=experiment.retrieval.chunk_size,
    )


def find_corpus_id(experiment: Experiment, store: Any) -> int:
    """The id of the experiment's ingested corpus, or a StoreError saying to ingest it."""
    key = corpus_fingerprint(experiment)
    with store.session() as session:
        corpus_id = session.scalar(select(Corpus.id).where(Corpus.fingerprint == key))
        has_documents = corpus_id is not None and session.scalar(
            select(Document.id).where(Document.corpus_id == corpus_id).limit(1)
        )
    if not has_documents:
        source = experiment.hint_file
        raise StoreError(
            f"this experiment's corpus is not ingested yet (no documents for its [corpus], "
            f"[tokenizer] and chunk_size); run: retro-platform ingest {source}"
        )
    return corpus_id


def load_tokenizer(experiment: Experiment, store: Any, corpus: Corpus) -> Tokenizer:
    """The tokenizer a stored corpus was cut with, loaded from the store where it trained."""
    tokenizer: Tokenizer = experiment.plugin_table("tokenizer").build()
    if corpus.tokenizer_file:
        tokenizer.load(store.path(corpus.tokenizer_file))
    return tokenizer


# --- one batch --------------------------------------------------------------------------------


def _ingest_batch(
    store: Any,
    corpus_id: int,
    batch: list[SourceDocument],
    tokenizer: Tokenizer,
    chunk_size: int,
    report: IngestReport,
    bumped: bool,
    seen: set[str],
    max_bytes: int,
    copy: bool = True,
    tokenizer_name: str = "tokenizer",
) -> bool:
    """Store a batch's new and changed documents in one transaction; True if any. The
    external ids of its usable documents are added to ``seen``.

    What to store is decided under the corpus's lock (:func:`lock_corpus`), so that another
    ingest of the same corpus at the same moment never stores a document twice; the batch is
    tokenized before, outside it, from what was stored then (a document that another ingest
    changed in between is tokenized under the lock), so the lock is held only for writing.
    """
    report.read += len(batch)
    candidates: dict[str, _Candidate] = {}
    for document in batch:
        text, reason = _decode(document, max_bytes)
        if reason is not None:
            _skip(report, document.external_id, reason)
        elif document.external_id in candidates:
            _skip(report, document.external_id, "duplicate id")
        else:
            checksum = hashlib.sha256(document.data).hexdigest()
            candidates[document.external_id] = (
                text,
                checksum,
                len(document.data),
                document.metadata,
            )
    seen.update(candidates)
    if not candidates:
        return False

    with store.session() as session:
        stored = _stored(session, corpus_id, candidates)
    encodings = _encode(tokenizer, candidates, _changed(candidates, stored), tokenizer_name)

    with store.session() as session:
        lock_corpus(session, corpus_id)
        stored = _stored(session, corpus_id, candidates)
        fresh = {}
        for external_id in _changed(candidates, stored):
            fresh[external_id] = candidates[external_id]
        for external_id, (_, _, _, meta) in candidates.items():
            if external_id in fresh:
                continue
            report.unchanged += 1
            if stored[external_id][1] != meta:  # the same text, newer metadata (a package's
                session.execute(  # new version): no chunk changes, so derived data is not stale
                    update(Document)
                    .where(Document.corpus_id == corpus_id, Document.external_id == external_id)
                    .values(meta=meta)
                )
        if not fresh:
            return False

        replaced = [external_id for external_id in fresh if external_id in stored]
        if replaced:
            delete_documents(session, corpus_id, replaced)
            report.replaced += len(replaced)

        late = [external_id for external_id in fresh if external_id not in encodings]
        # changed by another ingest
        encodings.update(_encode(tokenizer, candidates, late, tokenizer_name))
        document_rows, encoded = [], []
        for external_id, (text, checksum, size, meta) in fresh.items():
            encoding = encodings.pop(external_id)
            tokens = len(encoding.ids)
            if not tokens:
                _skip(report, external_id, "no tokens")
                continue
            document_rows.append(
                {
                    "corpus_id": corpus_id,
                    "external_id": external_id,
                    "checksum": checksum,
                    "num_bytes": size,
                    "num_tokens": tokens,
                    "num_chunks": -(-tokens // chunk_size),
                    "meta": meta,
                }
            )
            encoded.append((text, encoding))
        del encodings
        if document_rows:
            ids = insert_documents(session, document_rows, copy=copy)
            report.chunks_added += insert_chunks(
                session, _chunk_rows(ids, encoded, chunk_size), copy=copy
            )
        elif not replaced:
            return False
        # a replaced document is gone even when its new text gave no tokens to store
        if not bumped:  # derived data built from the old version is now stale
            corpus = session.get(Corpus, corpus_id)
            corpus.version += 1
        report.added += len(document_rows) - len(
            [row for row in document_rows if row["external_id"] in replaced]
        )
    return True


def _stored(
    session: Any, corpus_id: int, candidates: dict[str, _Candidate]
) -> dict[str, tuple[str, dict[str, str] | None]]:
    """external_id -> (checksum, metadata) of the candidates already stored."""
    return {
        external_id: (checksum, meta)
        for external_id, checksum, meta in session.execute(
            select(Document.external_id, Document.checksum, Document.meta).where(
                Document.corpus_id == corpus_id,
                Document.external_id.in_(list(candidates)),
            )
        )
    }


def _changed(
    candidates: dict[str, _Candidate], stored: dict[str, tuple[str, dict[str, str] | None]]
) -> list[str]:
    """The candidates whose text is not stored as it is: new or changed, in batch order."""
    return [
        external_id
        for external_id, (_, checksum, _, _) in candidates.items()
        if stored.get(external_id, (None, None))[0] != checksum
    ]


def _encode(
    tokenizer: Tokenizer,
    candidates: dict[str, _Candidate],
    external_ids: list[str],
    tokenizer_name: str,
) -> dict[str, Any]:
    """external_id -> the tokenizer's encoding of that candidate's text."""
    if not external_ids:
        return {}
    texts = [candidates[external_id][0] for external_id in external_ids]
    encodings = checked_encodings(
        tokenizer_name, tokenizer, texts, tokenizer.encode_batch(texts), external_ids
    )
    return dict(zip(external_ids, encodings, strict=True))


def _chunk_rows(
    ids: list[int], encoded: list[tuple[str, Any]], chunk_size: int
) -> Iterator[dict[str, Any]]:
    """Every chunk row of the documents, in id then position order; each document's text and
    encoding are let go as soon as its chunks are out."""
    encoded.reverse()  # popped in order, so that each document's memory goes when it is done
    for document_id in ids:
        text, encoding = encoded.pop()
        for span in iter_chunks(text, encoding, chunk_size):
            yield _chunk_row(document_id, span)
        del text, encoding


def _chunk_row(document_id: int, span: ChunkSpan) -> dict[str, Any]:
    return {
        "document_id": document_id,
        "position": span.position,
        "token_start": span.token_start,
        "token_end": span.token_end,
        "text": span.text,
        "token_ids": span.token_ids.astype("<i4").tobytes(),
    }


def _decode(document: SourceDocument, max_bytes: int) -> tuple[str, str | None]:
    """The document's text, or the reason it is skipped."""
    if document.problem is not None:
        return "", document.problem
    if len(document.data) > max_bytes:
        return "", f"larger than {_size(max_bytes)} ([store] max_document_bytes)"
    try:
        text = document.data.decode("utf-8")
    except UnicodeDecodeError:
        return "", "not UTF-8"
    if not text.strip():
        return "", "empty"
    return text, None


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"


def _skip(report: IngestReport, external_id: str, reason: str) -> None:
    report.skipped[reason] += 1
    if len(report.skipped_examples) < EXAMPLES:
        report.skipped_examples.append(f"{external_id}: {reason}")


def _usable_texts(documents: Iterable[SourceDocument], max_bytes: int) -> Iterator[str]:
    for document in documents:
        text, reason = _decode(document, max_bytes)
        if reason is None:
            yield text


def _batches(documents: Iterable[SourceDocument]) -> Iterator[list[SourceDocument]]:
    batch: list[SourceDocument] = []
    size = 0
    for document in documents:
        batch.append(document)
        size += len(document.data)
        if len(batch) >= BATCH_DOCUMENTS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
