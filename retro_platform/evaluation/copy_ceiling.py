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

It is generous on purpose: a sequence's first chunk counts though RETRO cannot condition it,
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

from retro_platform.evaluation.bpb import LN2, token_losses
from retro_platform.training.batch import Batch

_U64 = np.uint64
#: Odd multiplier of the n-gram hash.
_BASE = _U64(0x100000001B3)


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
    document_ids: np.ndarray,
    positions: np.ndarray,
    training: np.ndarray,
    pad_id: int,
    n: int,
) -> np.ndarray:
    """Sorted unique hashes of every ``n``-token run inside one training document.

    Args:
        chunk_tokens: ``(chunks, m)`` token ids, short chunks padded with ``pad_id``.
        document_ids, positions: ``(chunks,)`` each chunk's document and place in it.
        training: ``(chunks,)`` bool, the chunks of training documents.
    """
    rows = np.flatnonzero(training)
    rows = rows[np.lexsort((positions[rows], document_ids[rows]))]
    stream = np.asarray(chunk_tokens)[rows].reshape(-1)
    documents = np.repeat(document_ids[rows], chunk_tokens.shape[1])
    real = stream != pad_id  # a short chunk's padding is not text
    stream, documents = stream[real], documents[real]
    hashes = ngram_hashes(stream, n)
    inside = documents[: len(hashes)] == documents[n - 1 :]
    return np.unique(hashes[inside])


def copyable_targets(sequences: np.ndarray, ngrams: np.ndarray, n: int, pad_id: int) -> np.ndarray:
    """Which targets of each sequence are copyable at ``n`` (see the module docstring).

    Args:
        sequences: ``(b, L + 1)`` token ids, as in :class:`Batch` ``tokens``.
        ngrams: :func:`training_ngrams` of the same ``n``.
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
    """

    n: int
    share: float
    bpb: float
    ceiling_bpb: float
    reduction: float
    loss_copyable: float
    loss_other: float


def copy_ceiling(
    losses: np.ndarray,
    sequences: np.ndarray,
    num_bytes: int,
    ngrams: dict[int, np.ndarray],
    pad_id: int,
) -> list[CeilingRow]:
    """One :class:`CeilingRow` per run length in ``ngrams``.

    Args:
        losses: ``(b, L)`` nats of each position (0 where the target is padding).
        sequences: ``(b, L + 1)`` the sequences those losses were measured on.
        num_bytes: UTF-8 bytes of the sequences' text (the bpb denominator).
        ngrams: run length -> :func:`training_ngrams` of that length.
    """
    losses = np.asarray(losses, dtype=np.float64)
    counted = np.asarray(sequences)[:, 1:] != pad_id
    total = losses[counted].sum()
    rows = []
    for n, hashes in sorted(ngrams.items()):
        copyable = copyable_targets(sequences, hashes, n, pad_id) & counted
        other = counted & ~copyable
        bpb = total / LN2 / num_bytes
        ceiling = losses[other].sum() / LN2 / num_bytes
        rows.append(
            CeilingRow(
                n=n,
                share=float(copyable.sum() / max(counted.sum(), 1)),
                bpb=float(bpb),
                ceiling_bpb=float(ceiling),
                reduction=float(1 - ceiling / bpb) if bpb > 0 else math.nan,
                loss_copyable=_mean(losses[copyable]),
                loss_other=_mean(losses[other]),
            )
        )
    return rows


def validation_losses(
    model: nn.Module, batches: Iterable[Batch], *, pad_id: int, retrieval: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-position losses of ``model`` over ``batches`` (on the CPU, in eval mode).

    Returns ``(losses (b, L), sequences (b, L + 1), bytes)`` for :func:`copy_ceiling`;
    ``retrieval`` False evaluates the same weights without neighbours.
    """
    was_training = model.training
    model.eval()
    losses, sequences, num_bytes = [], [], 0
    try:
        with torch.inference_mode():
            for batch in batches:
                retrieved = batch.retrieved if retrieval else None
                losses.append(token_losses(model, batch.tokens, retrieved, pad_id=pad_id))
                sequences.append(batch.tokens)
                num_bytes += int(batch.chunk_bytes.sum())
    finally:
        model.train(was_training)
    return torch.cat(losses).numpy(), torch.cat(sequences).numpy(), num_bytes


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan
