"""The copy ceiling: how far retrieval could lower a model's bpb by copying text, at most.

The leakage table shows how much of retrieval's gain comes from chunks that overlap what they
retrieved. This asks the question before training a RETRO: of the validation text, how much is
in the training documents at all, and what is it worth?

- A validation target token is *copyable at n* when it and the ``n - 1`` tokens before it in its
  sequence (none of them padding) occur as one run of ``n`` tokens inside one training
  document. The database is the training documents, as for validation neighbours.
- The ceiling at ``n``: the bits per byte of a model's validation losses with every copyable
  target's loss set to 0, i.e. as if retrieval always brought the right text and the model
  copied it with certainty. Run on a baseline model (trained without retrieval) it bounds what a
  RETRO of that size could gain by copying.

With the neighbours the model was given, the same question is asked of them alone: a target
is *copyable from its neighbours* when its run of ``n`` tokens is inside one of the neighbours
(chunk plus continuation) that condition its position, those of the chunk before the one the
position's next token starts (RETRO's causal shift). Copyable anywhere but not from the
neighbours is what the retriever missed; copyable from the neighbours but still costly is what
the model failed to copy.

The ceiling is generous on purpose: a sequence's first chunk counts though RETRO cannot condition it,
and a short run (``n = 8``) is often a common idiom whose next token is not determined by it.
What it leaves out is any gain that is not copying (e.g. a neighbour with similar but not equal
code), which the paper finds small.

Runs are found by hashing every ``n``-gram (a 64-bit polynomial hash of the token ids; a false
match needs a 64-bit collision) and looking the validation hashes up in the sorted unique
training ones: numpy throughout, a few seconds for the whole standard library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from retro_platform.corpus.chunk_table import ChunkTable
from retro_platform.evaluation.bpb import LN2, token_losses
from retro_platform.training.batch import Batch

_U64 = np.uint64
#: Odd multiplier of the n-gram hash.
_BASE = _U64(0x100000001B3)
#: Odd multiplier that joins a run's hash to its group (:func:`copyable_from_neighbours`).
_GROUP = _U64(0x9E3779B97F4A7C15)


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of ``n`` tokens along the last axis: ``(..., L)`` -> ``(..., L - n + 1)``.

    Entry ``j`` hashes ``tokens[..., j : j + n]``; an axis shorter than ``n`` gives no entry.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    tokens = np.asarray(tokens)
    count = max(tokens.shape[-1] - n + 1, 0)
    out = np.zeros(tokens.shape[:-1] + (count,), dtype=_U64)
    ids = tokens.astype(np.int64).astype(_U64) + _U64(1)  # 0 stays distinct from "no token"
    for offset in range(n):
        out = out * _BASE + ids[..., offset : offset + count]
    return out


def training_ngrams(
    chunk_tokens: np.ndarray,
    table: ChunkTable,
    held_out: np.ndarray,
    pad_id: int,
    lengths: Iterable[int],
) -> dict[int, np.ndarray]:
    """For each run length ``n`` in ``lengths``: the sorted unique hashes of every ``n``-token
    run inside one training document.

    Args:
        chunk_tokens: ``(chunks, m)`` token ids in the table's row order, short chunks padded
            with ``pad_id``.
        table: the corpus's chunk table (each chunk's document and place in it).
        held_out: ids of the validation documents, which are not training text.
    """
    document_ids, positions = table.document_ids, table.positions
    rows = np.flatnonzero(~np.isin(document_ids, held_out))
    rows = rows[np.lexsort((positions[rows], document_ids[rows]))]
    stream = np.asarray(chunk_tokens)[rows].reshape(-1)
    documents = np.repeat(document_ids[rows], chunk_tokens.shape[1])
    real = stream != pad_id  # a short chunk's padding is not text
    stream, documents = stream[real], documents[real]
    ngrams = {}
    for n in lengths:
        hashes = ngram_hashes(stream, n)
        inside = documents[: len(hashes)] == documents[n - 1 :]
        ngrams[n] = np.unique(hashes[inside])
    return ngrams


def copyable_targets(sequences: np.ndarray, ngrams: np.ndarray, n: int, pad_id: int) -> np.ndarray:
    """Which targets of each sequence are copyable at ``n`` (see the module docstring).

    Args:
        sequences: ``(b, L + 1)`` token ids, as in :class:`Batch` ``tokens``.
        ngrams: the hashes :func:`training_ngrams` gives for the same ``n``.
    Returns:
        ``(b, L)`` bool, aligned with the positions of
        :func:`~retro_platform.evaluation.bpb.token_losses` (position ``t`` predicts token
        ``t + 1``).
    """
    sequences = np.asarray(sequences)
    b, width = sequences.shape
    copyable = np.zeros((b, width), dtype=bool)
    if width >= n:
        runs = np.lib.stride_tricks.sliding_window_view(sequences, n, axis=1)
        found = np.isin(ngram_hashes(sequences, n), ngrams) & np.all(runs != pad_id, axis=-1)
        copyable[:, n - 1 :] = found  # a run ending at token j makes target j copyable
    return copyable[:, 1:]


def copyable_from_neighbours(
    sequences: np.ndarray, retrieved: np.ndarray, n: int, pad_id: int
) -> np.ndarray:
    """Which targets are copyable at ``n`` from the neighbours that condition their position.

    Args:
        sequences: ``(b, L + 1)`` token ids, ``L = c * m``.
        retrieved: ``(b, c, k, 2m)`` each chunk's neighbours plus continuations, as in
            :class:`Batch` ``retrieved``.
    Returns:
        ``(b, L)`` bool like :func:`copyable_targets`. Position ``p`` is conditioned by the
        neighbours of chunk ``(p + 1) // m - 1``; positions before ``m - 1`` by none.
    """
    sequences, retrieved = np.asarray(sequences), np.asarray(retrieved)
    b, width = sequences.shape
    c = retrieved.shape[1]
    length = width - 1
    out = np.zeros((b, length), dtype=bool)
    if c == 0 or width < n or retrieved.shape[-1] < n:
        return out
    m = length // c
    # a run's key joins its hash to its (sequence, chunk) group, so one lookup serves all
    groups = (np.arange(b)[:, None] * c + np.arange(c)[None, :]).astype(_U64)
    windows = np.lib.stride_tricks.sliding_window_view(retrieved, n, axis=-1)
    usable = np.all(windows != pad_id, axis=-1)  # (b, c, k, 2m - n + 1)
    keys = ngram_hashes(retrieved, n) * _GROUP + groups[:, :, None, None]
    known = np.unique(keys[usable])

    positions = np.arange(length)
    source = (positions + 1) // m - 1  # the chunk whose neighbours condition the position
    start = positions + 2 - n  # the run that ends at the position's target
    ok = (source >= 0) & (start >= 0)
    runs = np.lib.stride_tricks.sliding_window_view(sequences, n, axis=1)[:, start[ok]]
    asked = ngram_hashes(sequences, n)[:, start[ok]] * _GROUP + (
        np.arange(b)[:, None] * c + source[ok][None, :]
    ).astype(_U64)
    out[:, ok] = np.isin(asked, known) & np.all(runs != pad_id, axis=-1)
    return out


@dataclass(frozen=True)
class ValidationLosses:
    """A model's per-position validation losses and what they were measured on."""

    losses: np.ndarray  # (b, L) nats, 0 where the target is padding
    sequences: np.ndarray  # (b, L + 1) token ids
    retrieved: np.ndarray | None  # (b, c, k, 2m) the neighbours the batches carried
    num_bytes: int  # UTF-8 bytes of the sequences' text
    pad_id: int

    @property
    def counted(self) -> np.ndarray:
        """``(b, L)`` the positions whose target is not padding."""
        return self.sequences[:, 1:] != self.pad_id


@dataclass(frozen=True)
class CeilingRow:
    """The copy ceiling at one run length.

    Attributes:
        n: the run length.
        share: copyable targets over all counted targets.
        bpb: bits per byte of the losses as measured.
        ceiling_bpb: the same with every copyable target's loss set to 0.
        reduction: ``1 - ceiling_bpb / bpb``, the most that copying could take off.
        loss_copyable, loss_other: mean nats per target, copyable and not (NaN when none).
        given_share: targets copyable from the neighbours that condition them, over all
            counted targets (NaN without neighbours).
        given_ceiling_bpb: bpb with those targets' losses set to 0.
        loss_given: mean nats per target copyable from its neighbours.
    """

    n: int
    share: float
    bpb: float
    ceiling_bpb: float
    reduction: float
    loss_copyable: float
    loss_other: float
    given_share: float = math.nan
    given_ceiling_bpb: float = math.nan
    loss_given: float = math.nan


def copy_ceiling(measured: ValidationLosses, ngrams: dict[int, np.ndarray]) -> list[CeilingRow]:
    """One :class:`CeilingRow` per run length in ``ngrams`` (from :func:`training_ngrams`)."""
    losses = np.asarray(measured.losses, dtype=np.float64)
    counted = measured.counted
    bpb = losses[counted].sum() / LN2 / measured.num_bytes
    rows = []
    for n, hashes in sorted(ngrams.items()):
        copyable = copyable_targets(measured.sequences, hashes, n, measured.pad_id) & counted
        other = counted & ~copyable
        ceiling = losses[other].sum() / LN2 / measured.num_bytes
        given: dict[str, float] = {}
        if measured.retrieved is not None:
            from_neighbours = counted & copyable_from_neighbours(
                measured.sequences, measured.retrieved, n, measured.pad_id
            )
            given = {
                "given_share": float(from_neighbours.sum() / max(counted.sum(), 1)),
                "given_ceiling_bpb": float(
                    losses[counted & ~from_neighbours].sum() / LN2 / measured.num_bytes
                ),
                "loss_given": _mean(losses[from_neighbours]),
            }
        rows.append(
            CeilingRow(
                n=n,
                share=float(copyable.sum() / max(counted.sum(), 1)),
                bpb=float(bpb),
                ceiling_bpb=float(ceiling),
                reduction=float(1 - ceiling / bpb) if bpb > 0 else math.nan,
                loss_copyable=_mean(losses[copyable]),
                loss_other=_mean(losses[other]),
                **given,
            )
        )
    return rows


def validation_losses(
    model: nn.Module, batches: Iterable[Batch], *, pad_id: int, retrieval: bool
) -> ValidationLosses:
    """Per-position losses of ``model`` over ``batches`` (on the CPU, in eval mode).

    ``retrieval`` False evaluates the same weights without neighbours; the neighbours the
    batches carry are kept either way, to ask what the model could have copied from them.
    """
    was_training = model.training
    model.eval()
    losses, sequences, retrieved, num_bytes = [], [], [], 0
    try:
        with torch.inference_mode():
            for batch in batches:
                given = batch.retrieved if retrieval else None
                losses.append(token_losses(model, batch.tokens, given, pad_id=pad_id))
                sequences.append(batch.tokens)
                if batch.retrieved is not None:
                    retrieved.append(batch.retrieved)
                num_bytes += int(batch.chunk_bytes.sum())
    finally:
        model.train(was_training)
    return ValidationLosses(
        losses=torch.cat(losses).numpy(),
        sequences=torch.cat(sequences).numpy(),
        retrieved=torch.cat(retrieved).numpy() if retrieved else None,
        num_bytes=num_bytes,
        pad_id=pad_id,
    )


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan
