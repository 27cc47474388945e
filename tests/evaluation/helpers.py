"""A small real store, batches cut from it by hand (as the data loader does), tiny models."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from retro_platform import RETRO
from retro_platform.cli.common import open_experiment
from retro_platform.config import Experiment
from retro_platform.corpus.chunk_table import ChunkTable, load_chunk_table, validation_documents
from retro_platform.corpus.ingest import load_tokenizer
from retro_platform.neighbours.retrieved import load_chunk_tokens, neighbour_tokens
from retro_platform.pipeline import IndexResult, ingest, run_index
from retro_platform.protocols import Tokenizer
from retro_platform.store.models import Chunk, Corpus, Document
from retro_platform.training.batch import Batch
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus

#: 0.3 holds out bisect.py, fnmatch.py and keyword.py (a stable hash of the file name).
VALIDATION_FRACTION = 0.3


@dataclass(frozen=True)
class IndexedStore:
    """An ingested, indexed store and its arrays in chunk-id order."""

    experiment: Experiment
    store: Any
    result: IndexResult
    tokenizer: Tokenizer
    table: ChunkTable
    chunk_tokens: np.ndarray  # (chunks, m) int32
    continuation: np.ndarray  # (chunks,)
    neighbours: np.ndarray  # (chunks, k) neighbour chunk ids
    chunk_bytes: np.ndarray  # (chunks,) UTF-8 bytes of each chunk's text
    held_out: np.ndarray  # validation document ids
    documents: dict[int, str]  # document id -> external id

    @property
    def m(self) -> int:
        return self.chunk_tokens.shape[1]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    def training_documents(self) -> np.ndarray:
        return np.array(sorted(set(self.documents) - set(self.held_out.tolist())))


def build_store(folder: Path) -> IndexedStore:
    """Six standard-library modules, byte tokens, 32-token chunks, hashing embeddings, exact
    Faiss search, 30% of the documents held out."""
    corpus = write_stdlib_corpus(folder / "corpus")
    path = write_experiment(
        folder,
        corpus,
        f"sqlite:///{folder / 'store' / 'retro.db'}",
        retrieval={"chunk_size": 32, "neighbours": 2, "validation_fraction": VALIDATION_FRACTION},
    )
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    result = run_index(experiment, store, progress=False, log=lambda _: None)
    with store.session() as session:
        corpus_row = session.get(Corpus, result.corpus_id)
        tokenizer = load_tokenizer(experiment, store, corpus_row)
        table = load_chunk_table(session, result.corpus_id)
        tokens = load_chunk_tokens(session, result.corpus_id, 32, tokenizer.pad_id)
        texts = session.execute(
            select(Chunk.text)
            .join(Document)
            .where(Document.corpus_id == result.corpus_id)
            .order_by(Chunk.id)
        ).scalars()
        chunk_bytes = np.array([len(text.encode("utf-8")) for text in texts], dtype=np.int64)
        held_out = validation_documents(session, result.corpus_id, VALIDATION_FRACTION)
        documents = dict(
            session.execute(
                select(Document.id, Document.external_id).where(
                    Document.corpus_id == result.corpus_id
                )
            ).all()
        )
    return IndexedStore(
        experiment,
        store,
        result,
        tokenizer,
        table,
        tokens,
        table.continuation_rows(),
        np.asarray(result.neighbours.open()),
        chunk_bytes,
        held_out,
        documents,
    )


def document_batches(
    indexed: IndexedStore,
    documents: Iterable[int],
    *,
    seq_chunks: int = 4,
    batch_size: int = 8,
    retrieval: bool = True,
    limit: int | None = None,
) -> list[Batch]:
    """Every document cut into sequences of ``seq_chunks`` chunks (the last one padded), each
    followed by the next chunk's first token, batched; at most ``limit`` sequences."""
    m, pad = indexed.m, indexed.pad_id
    table = indexed.table
    sequences = []  # (chunk rows, next token)
    for document in documents:
        rows = np.flatnonzero(table.document_ids == document)
        rows = rows[np.argsort(table.positions[rows])]
        for start in range(0, len(rows), seq_chunks):
            part = rows[start : start + seq_chunks]
            after = rows[start + seq_chunks] if start + seq_chunks < len(rows) else -1
            following = int(indexed.chunk_tokens[after, 0]) if after >= 0 else pad
            sequences.append(
                (np.pad(part, (0, seq_chunks - len(part)), constant_values=-1), following)
            )
    sequences = sequences[:limit]

    batches = []
    for start in range(0, len(sequences), batch_size):
        group = sequences[start : start + batch_size]
        chunk_rows = np.stack([rows for rows, _ in group])  # (b, c)
        padded = np.concatenate([indexed.chunk_tokens, np.full((1, m), pad, np.int32)])
        tokens = padded[chunk_rows].reshape(len(group), seq_chunks * m)  # -1 -> the pad row
        tokens = np.concatenate([tokens, [[following] for _, following in group]], axis=1)
        neighbour_ids = np.where(chunk_rows[..., None] >= 0, indexed.neighbours[chunk_rows], -1)
        neighbour_rows = indexed.table.rows_of(neighbour_ids)  # (b, c, k)
        retrieved = neighbour_tokens(
            indexed.chunk_tokens, indexed.continuation, neighbour_rows, pad
        )
        sizes = np.where(chunk_rows >= 0, indexed.chunk_bytes[chunk_rows], 0)
        batches.append(
            Batch(
                tokens=torch.from_numpy(tokens.astype(np.int64)),
                retrieved=torch.from_numpy(retrieved.astype(np.int64)) if retrieval else None,
                chunk_rows=torch.from_numpy(chunk_rows.astype(np.int64)),
                neighbour_rows=torch.from_numpy(neighbour_rows.astype(np.int64)),
                chunk_bytes=torch.from_numpy(sizes.astype(np.int64)),
            )
        )
    return batches


def tiny_retro(indexed: IndexedStore, *, seq_chunks: int = 4, seed: int = 0) -> RETRO:
    """A RETRO of a few tens of thousands of parameters for the store's byte tokens."""
    torch.manual_seed(seed)
    return RETRO(
        num_tokens=indexed.tokenizer.vocab_size,
        max_seq_len=seq_chunks * indexed.m,
        enc_dim=32,
        enc_depth=1,
        dec_depth=2,
        dec_cross_attn_layers=(1, 2),
        heads=2,
        dec_dim=32,
        dim_head=16,
        chunk_size=indexed.m,
        pad_id=indexed.pad_id,
    )


def train(model: RETRO, batches: list[Batch], steps: int, *, lr: float = 3e-3) -> RETRO:
    """A few AdamW steps over ``batches`` (cycled), retrieval on."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = model(batch.tokens, batch.retrieved, return_loss=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
