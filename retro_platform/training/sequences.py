"""The data loader: training and validation sequences cut from the store's chunks.

Everything is read from SQL and the neighbour file once (:func:`load_sequence_data`); every
batch afterwards is numpy indexing into those arrays, so a training step runs no query and no
Python loop over tokens.

A sequence is ``c = seq_len / chunk_size`` consecutive chunks (a *window*) plus one token, the
first of the chunk that follows the window, so that every position has a target.

- By default a window holds chunks of one document only: each document's chunks are cut into
  non-overlapping windows, the last one padded (padding rows ``-1``, padding tokens), and the
  extra token is padding when the document ends inside or at the end of the window.
- With ``[train] cross_documents = true`` training windows run over the concatenation of the
  training documents (by document id, then position), so a window may span several documents.
  A chunk's stored neighbours only exclude its own document, so here every neighbour whose
  document is any of the documents the window spans becomes ``-1`` (padding): otherwise a
  chunk could retrieve the text that the same sequence shows a few chunks later or earlier.
  Chunks stay the store's chunks (a document's short last chunk keeps its padding), so each
  lines up with its neighbours. This applies when ``[retrieval] exclude_same_document`` is on;
  a user who turned that off asked for neighbours from the same text.
- Validation windows always come from the held-out documents, one document per window whatever
  ``cross_documents`` says, so that runs with and without it are measured on the same
  sequences; the first window of every held-out document comes first, then the second ones...

- Training windows come from the documents of ``[train] document_fraction``
  (:func:`~retro_platform.corpus.chunk_table.training_documents`), while neighbours come from
  the whole database, every document not held out: the database is larger than what the model
  trains on, as in the paper, so what a chunk needs is more often retrieved than memorised.
- ``[train] neighbours = "shuffled"`` replaces every neighbour, of training and validation
  chunks alike, by a random database chunk of another document
  (:func:`~retro_platform.neighbours.shuffled.shuffled_neighbours`), seeded by the experiment.
- ``[retrieval] align_neighbours`` cuts each neighbour from its document at the offset that
  lines it up with the query chunk (:mod:`retro_platform.neighbours.aligned`), computed once
  here for every chunk and neighbour (after shuffling, so a control is treated alike).

Training order: a permutation of the training windows per epoch, drawn from ``(seed, epoch)``
alone, so batch ``s`` is a pure function of ``(seed, s)`` and resuming at step ``s`` needs only
``s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from retro_platform.config import Experiment
from retro_platform.corpus.chunk_table import (
    ChunkTable,
    load_chunk_table,
    training_documents,
    validation_documents,
)
from retro_platform.corpus.ingest import find_corpus_id
from retro_platform.errors import ConfigError, StoreError
from retro_platform.neighbours.aligned import (
    TokenStream,
    aligned_neighbour_tokens,
    alignment_offsets,
)
from retro_platform.neighbours.retrieved import load_chunk_tokens, neighbour_tokens
from retro_platform.neighbours.shuffled import shuffled_neighbours
from retro_platform.protocols import Tokenizer
from retro_platform.store.chunks import read_chunks
from retro_platform.training.batch import Batch

if TYPE_CHECKING:
    from retro_platform.pipeline import IndexResult

Split = Literal["train", "val"]


@dataclass(frozen=True, eq=False)
class Windows:
    """The sequences of one split, in their natural order (documents by id, then position)."""

    chunk_rows: np.ndarray  # (w, c) int64 rows of the chunk table, -1: padding
    next_rows: np.ndarray  # (w,) int64 row whose first token ends the sequence, -1: padding
    neighbour_rows: np.ndarray  # (w, c, k) int64 rows of the neighbours, -1: none
    order: np.ndarray  # (w,) int64 the order sequences are served in (validation) or natural
    tokens: int  # target tokens of the split's sequences (padding is no target)

    def __len__(self) -> int:
        return len(self.chunk_rows)


@dataclass(frozen=True, eq=False)
class SequenceData:
    """A corpus's chunks, neighbours and sequences, in memory; batches are cut from these.

    ``chunk_tokens``, ``chunk_bytes`` and the chunk table are in chunk-id order (row ``i`` is
    the ``i``-th chunk), the rows a :class:`Batch` names.
    """

    table: ChunkTable
    chunk_tokens: np.ndarray  # (chunks, m) int32, short chunks padded
    chunk_bytes: np.ndarray  # (chunks,) int64 UTF-8 bytes of each chunk's text
    neighbour_rows: np.ndarray  # (chunks, k) int64, -1: none
    continuation: np.ndarray  # (chunks,) int64 next row of the same document, -1: none
    validation_documents: np.ndarray  # (held-out documents,) int64 ids
    training_documents: np.ndarray  # (documents trained on,) int64 ids
    #: with [retrieval] align_neighbours: the documents' tokens, and each neighbour's offset
    stream: TokenStream | None
    neighbour_offsets: np.ndarray | None  # (chunks, k) int64
    train: Windows
    val: Windows
    pad_id: int
    seq_len: int
    chunk_size: int
    neighbours: int
    eval_sequences: int

    @cached_property
    def database_rows(self) -> np.ndarray:
        """Rows of the chunks the retrieval database holds: every document not held out."""
        return np.flatnonzero(~np.isin(self.table.document_ids, self.validation_documents))

    @property
    def chunks_per_sequence(self) -> int:
        return self.seq_len // self.chunk_size

    def windows(self, split: Split) -> Windows:
        if split not in ("train", "val"):
            raise ValueError(f'split must be "train" or "val", got {split!r}')
        return self.train if split == "train" else self.val

    def counts(self) -> dict[str, int]:
        """What the loader holds, for logging: sequences and tokens of each split."""
        return {
            "chunks": len(self.table),
            "documents": int(len(np.unique(self.table.document_ids))),
            "train/documents": len(self.training_documents),
            "train/sequences": len(self.train),
            "train/tokens": self.train.tokens,
            "val/documents": len(self.validation_documents),
            "val/sequences": min(len(self.val), self.eval_sequences),
            "val/tokens": int(self._tokens_of(self.val, self.val.order[: self.eval_sequences])),
        }

    def describe(self) -> str:
        """One line for a log."""
        c = self.counts()
        database = c["documents"] - c["val/documents"]
        return (
            f"{c['train/sequences']:,} training sequences ({c['train/tokens']:,} tokens) from "
            f"{c['train/documents']:,} of the {database:,} documents in the database, "
            f"{c['val/sequences']:,} validation sequences ({c['val/tokens']:,} tokens) "
            f"from {c['val/documents']:,} held-out documents; {self.seq_len} tokens = "
            f"{self.chunks_per_sequence} chunks of {self.chunk_size}, {self.neighbours} "
            "neighbours each"
        )

    def batches(
        self,
        split: Split,
        batch_size: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        retrieval: bool = True,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` sequences.

        ``"train"``: endless; batch ``s`` (counted from 0, ``start_step`` first) holds the
        sequences ``s * batch_size ...`` of the stream that concatenates one seeded
        permutation per epoch. ``part=(i, n)``: only the ``i``-th of ``n`` equal, contiguous
        slices of each such batch (training process ``i`` of ``n``), so the ``n`` processes
        together see exactly the batches one process would. ``"val"``: the first
        ``[eval] sequences`` validation sequences in a fixed order, once (the last batch may
        be smaller; none without held-out documents). ``retrieval=False`` leaves
        ``Batch.retrieved`` None.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        index, parts = part
        if split != "train" and parts != 1:
            raise ValueError("only training batches are sliced between processes")
        if batch_size % parts or not 0 <= index < parts:
            raise ValueError(f"cannot take slice {index} of {parts} of a batch of {batch_size}")
        share = batch_size // parts
        windows = self.windows(split)
        if split == "val":
            order = windows.order[: self.eval_sequences]
            for start in range(0, len(order), batch_size):
                yield self._batch(windows, order[start : start + batch_size], retrieval)
            return
        if len(windows) == 0:
            raise ConfigError(
                "no training sequences: every document is held out for validation or left "
                "out by [train] document_fraction; lower [retrieval] validation_fraction or "
                "raise document_fraction"
            )
        epochs = _Epochs(seed, len(windows))
        step = start_step
        while True:
            first = step * batch_size + index * share
            positions = np.arange(first, first + share, dtype=np.int64)
            yield self._batch(windows, epochs.take(positions), retrieval)
            step += 1

    # -----------------------------------------------------------------------------------------

    def _batch(self, windows: Windows, index: np.ndarray, retrieval: bool) -> Batch:
        rows = windows.chunk_rows[index]  # (b, c)
        # row -1 picks the extra padding row at the end of the padded arrays
        tokens = self._padded_tokens[rows].reshape(len(rows), -1)
        last = self._padded_tokens[windows.next_rows[index], :1]  # (b, 1)
        sequence = np.concatenate([tokens, last], axis=1)
        neighbour_rows = windows.neighbour_rows[index]  # (b, c, k)
        retrieved = None
        if retrieval and self.stream is not None:
            offsets = self._padded_offsets[rows]  # (b, c, k)
            found = aligned_neighbour_tokens(self.stream, neighbour_rows, offsets, self.pad_id)
            retrieved = torch.from_numpy(found).long()
        elif retrieval:
            found = neighbour_tokens(
                self.chunk_tokens, self.continuation, neighbour_rows, self.pad_id
            )
            retrieved = torch.from_numpy(found).long()
        chunk_bytes = self._padded_bytes[rows]
        return Batch(
            tokens=torch.from_numpy(sequence).long(),
            retrieved=retrieved,
            chunk_rows=torch.from_numpy(np.ascontiguousarray(rows)),
            neighbour_rows=torch.from_numpy(np.ascontiguousarray(neighbour_rows)),
            chunk_bytes=torch.from_numpy(chunk_bytes),
        )

    @cached_property
    def _padded_tokens(self) -> np.ndarray:
        return _with_padding_row(self.chunk_tokens, self.pad_id)

    @cached_property
    def _padded_offsets(self) -> np.ndarray:
        return _with_padding_row(self.neighbour_offsets, 0)

    @cached_property
    def _padded_bytes(self) -> np.ndarray:
        return _with_padding_row(self.chunk_bytes, 0)

    def _tokens_of(self, windows: Windows, index: np.ndarray) -> int:
        lengths = _with_padding_row(_chunk_lengths(self.chunk_tokens, self.pad_id), 0)
        rows = windows.chunk_rows[index]
        # every token after a sequence's first is a target, the extra last one included
        return int(lengths[rows].sum() + (windows.next_rows[index] >= 0).sum() - len(index))


class _Epochs:
    """The training stream: epoch ``e`` is the permutation drawn from ``(seed, e)``."""

    def __init__(self, seed: int, count: int) -> None:
        self.seed = seed % 2**64  # numpy seeds are non-negative
        self.count = count
        self.cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self.cache:
            if len(self.cache) >= 2:  # a batch spans at most two epochs at a time
                self.cache.pop(min(self.cache))
            rng = np.random.default_rng([self.seed, epoch])
            self.cache[epoch] = rng.permutation(self.count)
        return self.cache[epoch]

    def take(self, positions: np.ndarray) -> np.ndarray:
        epochs, offsets = np.divmod(positions, self.count)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):  # one or two epochs per batch (more if it is tiny)
            here = epochs == epoch
            out[here] = self.permutation(int(epoch))[offsets[here]]
        return out


# ---------------------------------------------------------------------------------------------
# loading


def load_sequence_data(
    experiment: Experiment, store: Any, index_result: IndexResult | None, tokenizer: Tokenizer
) -> SequenceData:
    """Read a corpus's chunks and neighbours once and cut them into sequences.

    Args:
        index_result: the :class:`retro_platform.pipeline.IndexResult` of the experiment (its
            corpus and neighbour file), or None to train without neighbours (every neighbour
            ``-1``).
        tokenizer: the corpus's tokenizer (its ``pad_id``).
    """
    chunk_size = experiment.retrieval.chunk_size
    seq_len = experiment.train.seq_len
    k = experiment.retrieval.neighbours
    if seq_len % chunk_size:
        raise ConfigError(
            f"[train] seq_len ({seq_len}) must be a multiple of [retrieval] chunk_size "
            f"({chunk_size})"
        )
    pad_id = tokenizer.pad_id
    if index_result is None:
        corpus_id = find_corpus_id(experiment, store)
    else:
        corpus_id = index_result.corpus_id

    with store.session() as session:
        table = load_chunk_table(session, corpus_id)
        tokens = load_chunk_tokens(session, corpus_id, chunk_size, pad_id)
        chunk_bytes = _load_chunk_bytes(session, corpus_id, len(table))
        held_out = validation_documents(
            session, corpus_id, experiment.retrieval.validation_fraction
        )
        trained = training_documents(
            session,
            corpus_id,
            experiment.retrieval.validation_fraction,
            experiment.train.document_fraction,
        )

    if index_result is None:
        neighbour_ids = np.full((len(table), k), -1, dtype=np.int64)
    else:
        stored = index_result.neighbours
        if stored.k < k or stored.count != len(table):
            raise StoreError(
                f"the neighbour file {stored.path} holds {stored.k} neighbours of "
                f"{stored.count} chunks, not {k} of {len(table)}; run: retro-platform index "
                f"{experiment.hint_file} --rebuild"
            )
        neighbour_ids = np.asarray(stored.open()[:, :k])
    try:
        neighbour_rows = table.rows_of(neighbour_ids)
    except KeyError:
        raise StoreError(
            "the neighbour file names chunks that are no longer in the corpus; run: "
            f"retro-platform index {experiment.hint_file} --rebuild"
        ) from None

    is_val = np.isin(table.document_ids, held_out)
    if experiment.train.neighbours == "shuffled":  # held-out documents are never in the index
        neighbour_rows = shuffled_neighbours(
            neighbour_rows, table.document_ids, np.flatnonzero(~is_val), experiment.experiment.seed
        )

    stream = offsets = None
    if experiment.retrieval.align_neighbours:
        stream = TokenStream.build(table, tokens, pad_id)
        offsets = alignment_offsets(stream, tokens, neighbour_rows, pad_id)

    c = seq_len // chunk_size
    lengths = _chunk_lengths(tokens, pad_id)
    is_train = np.isin(table.document_ids, trained)
    cross = experiment.train.cross_documents
    exclude_spanned = cross and experiment.retrieval.exclude_same_document

    def windows(val: bool, across: bool) -> Windows:
        rows = np.flatnonzero(is_val if val else is_train)
        order = rows[np.lexsort((table.positions[rows], table.document_ids[rows]))]
        if across:
            chunk_rows, next_rows, serve = _stream_windows(order, c)
        else:
            chunk_rows, next_rows, serve = _document_windows(order, table.document_ids, c)
        # targets: every token after the first, the extra last one included; a sequence of one
        # token and nothing after it has none and is left out
        targets = _with_padding_row(lengths, 0)[chunk_rows].sum(1) + (next_rows >= 0) - 1
        keep = targets >= 1
        ranks = np.cumsum(keep) - 1  # new index of each kept window
        serve = ranks[serve[keep[serve]]]
        chunk_rows, next_rows = chunk_rows[keep], next_rows[keep]
        neighbours = _with_padding_row(neighbour_rows, -1)[chunk_rows]  # (w, c, k)
        if across and exclude_spanned:
            neighbours = _drop_spanned(neighbours, chunk_rows, table.document_ids)
        return Windows(chunk_rows, next_rows, neighbours, serve, int(targets[keep].sum()))

    return SequenceData(
        table=table,
        chunk_tokens=tokens,
        chunk_bytes=chunk_bytes,
        neighbour_rows=neighbour_rows,
        continuation=table.continuation_rows(),
        validation_documents=held_out,
        training_documents=trained,
        stream=stream,
        neighbour_offsets=offsets,
        train=windows(val=False, across=cross),
        val=windows(val=True, across=False),
        pad_id=pad_id,
        seq_len=seq_len,
        chunk_size=chunk_size,
        neighbours=k,
        eval_sequences=experiment.eval.sequences,
    )


def _load_chunk_bytes(session: Any, corpus_id: int, count: int) -> np.ndarray:
    """``(chunks,)`` UTF-8 length of each chunk's text, in chunk-id order."""
    texts = (text for rows in read_chunks(session, corpus_id, "text") for (text,) in rows)
    return np.fromiter((len(text.encode("utf-8")) for text in texts), dtype=np.int64, count=count)


def _document_windows(
    order: np.ndarray, document_ids: np.ndarray, c: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each document's chunks (``order``: rows by document, position) cut into windows of
    ``c``. Returns chunk rows ``(w, c)``, next rows ``(w,)`` and the serving order: the first
    window of every document, then the second ones, ..."""
    n = len(order)
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return np.empty((0, c), dtype=np.int64), empty, empty
    documents = document_ids[order]
    starts = np.flatnonzero(np.r_[True, documents[1:] != documents[:-1]])
    lengths = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, lengths)  # a chunk's place in its document
    per_document = -(-lengths // c)
    first = np.r_[0, np.cumsum(per_document)[:-1]]  # each document's first window
    window = np.repeat(first, lengths) + rank // c
    total = int(per_document.sum())
    chunk_rows = np.full((total, c), -1, dtype=np.int64)
    chunk_rows[window, rank % c] = order
    # the chunk after window w is the first of window w + 1 when that is the same document's
    owner = np.repeat(np.arange(len(starts)), per_document)
    next_rows = np.full(total, -1, dtype=np.int64)
    same = owner[1:] == owner[:-1]
    next_rows[:-1][same] = chunk_rows[1:, 0][same]
    within = np.arange(total) - np.repeat(first, per_document)
    serve = np.lexsort((owner, within))
    return chunk_rows, next_rows, serve


def _stream_windows(order: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of ``c`` over the concatenation of the documents (``order``)."""
    total = -(-len(order) // c)
    chunk_rows = np.full(total * c, -1, dtype=np.int64)
    chunk_rows[: len(order)] = order
    chunk_rows = chunk_rows.reshape(total, c)
    next_rows = np.full(total, -1, dtype=np.int64)
    next_rows[:-1] = chunk_rows[1:, 0]
    return chunk_rows, next_rows, np.arange(total)


def _drop_spanned(
    neighbours: np.ndarray, chunk_rows: np.ndarray, document_ids: np.ndarray
) -> np.ndarray:
    """``neighbours (w, c, k)`` with every neighbour from a document the window spans set to
    ``-1``; processed in blocks so the ``(w, c, k, c)`` comparison stays small."""
    out = neighbours.copy()
    window_documents = np.where(chunk_rows >= 0, document_ids[chunk_rows], -1)  # (w, c)
    block = 4096
    for start in range(0, len(out), block):
        part = out[start : start + block]
        found = np.where(part >= 0, document_ids[part], -2)  # -2 never equals -1 (padding)
        spanned = (found[..., None] == window_documents[start : start + block, None, None]).any(-1)
        part[spanned] = -1
    return out


def _chunk_lengths(tokens: np.ndarray, pad_id: int) -> np.ndarray:
    return (tokens != pad_id).sum(axis=1).astype(np.int64)


def _with_padding_row(array: np.ndarray, fill: int) -> np.ndarray:
    """``array`` with one more row of ``fill`` at the end, which index ``-1`` selects."""
    return np.concatenate([array, np.full((1, *array.shape[1:]), fill, dtype=array.dtype)])
