"""Validation loss and bits per byte, with retrieval on and off (RETRO[off]).

Definitions, for a batch of sequences of ``n = c * m`` input tokens (``m`` the chunk size)
plus one target token after them (:class:`~retro_platform.training.batch.Batch`):

- Position ``t`` (``0 <= t < n``) reads ``tokens[:t + 1]`` and predicts ``tokens[t + 1]``. Its
  token loss is the cross-entropy in nats of that prediction, from the model's logits; a
  position whose target is padding has no loss and is not counted.
- Chunk ``u`` of a sequence owns positions ``u*m .. u*m + m - 1``, which predict tokens
  ``u*m + 1 .. u*m + m``: its own tokens but the first, and the first token of what follows
  it. Its loss is the sum of those positions' token losses; its bytes are the UTF-8 bytes of
  its text (``Batch.chunk_bytes``). A sequence's chunks thus cover its ``n`` predicted tokens
  exactly once, and its bytes exactly once.
- Validation loss: the summed token losses over the number of counted positions (mean nats per
  predicted token). Bits per byte: the summed token losses in bits (nats / ln 2) over the summed
  bytes of the chunks, so that runs with different tokenizers compare.
- Overlap (for the leakage table): a chunk's longest common token run with the neighbours
  that condition its predictions, those retrieved with the chunk before it (causality: chunk
  ``u - 1``'s neighbours reach positions ``u*m - 1 .. u*m + m - 2``); a sequence's first chunk
  has none, so its overlap is 0.
- Retrieval on: each batch's own neighbours (``Batch.retrieved``). Retrieval off: the same
  weights given no neighbours (``model(seq, None)``), the paper's RETRO[off]. A batch without
  neighbours (a baseline run's loader) is evaluated once, and its "on" and "off" numbers are
  the same.

Everything runs batch by batch in eval mode under ``torch.inference_mode``, so memory stays that
of one batch's logits; the model's training mode is restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retro_platform.errors import ConfigError
from retro_platform.evaluation.chunk_figures import ChunkFigures
from retro_platform.evaluation.overlap import overlap_ratios
from retro_platform.training.batch import Batch

LN2 = math.log(2.0)


@dataclass(frozen=True)
class EvalResult(ChunkFigures):
    """The validation numbers of one model, and its per-chunk figures (the ``chunk_*`` arrays
    of :class:`ChunkFigures`, which the leakage table and comparisons read).

    Attributes:
        loss: mean nats per predicted non-pad token, retrieval on.
        bpb: bits per byte, retrieval on.
        loss_off, bpb_off: the same with retrieval off; None when not asked for.
        tokens: predicted non-pad tokens counted.
        bytes: UTF-8 bytes of all chunks.
        retrieval: False when the batches carried no neighbours (then on == off).
    """

    loss: float
    bpb: float
    loss_off: float | None
    bpb_off: float | None
    tokens: int
    bytes: int
    retrieval: bool


def bits_per_byte(nats: float, num_bytes: int) -> float:
    """Summed token losses in nats over a number of UTF-8 bytes, as bits per byte."""
    return nats / LN2 / num_bytes if num_bytes > 0 else math.nan


def token_losses(
    model: nn.Module,
    tokens: Tensor,
    retrieved: Tensor | None,
    *,
    pad_id: int,
    autocast: torch.dtype | None = None,
) -> Tensor:
    """``(b, n)`` float32 nats of each position's prediction (0 where the target is padding).

    ``tokens`` is ``(b, n + 1)``; ``retrieved`` ``(b, n / m, k, 2m)`` or None.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    enabled = autocast is not None
    with torch.autocast(tokens.device.type, dtype=autocast, enabled=enabled):
        logits = model(inputs, retrieved, return_loss=False)
    # (b, n, vocab) -> (b, vocab, n): cross_entropy's class axis is 1
    return F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=pad_id, reduction="none"
    )


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device | str,
    retrieval_off: bool = True,
    autocast: torch.dtype | None = None,
) -> EvalResult:
    """Validation loss and bits per byte of ``model`` over ``batches`` (see the module's
    definitions), with retrieval on and, when ``retrieval_off``, off.

    ``model`` is a RETRO (its ``pad_id`` and ``chunk_size`` are read); ``autocast`` runs the
    forward passes under that dtype (e.g. ``torch.bfloat16`` on CUDA); losses are always summed
    in fp32/fp64.

    Raises:
        ConfigError: the batches hold no token to predict (an empty validation set).
    """
    pad_id, m = model.pad_id, model.chunk_size
    was_training = model.training
    model.eval()
    rows, on, off, counted, sizes, overlaps = [], [], [], [], [], []
    with_neighbours: set[bool] = set()
    try:
        with torch.inference_mode():
            for batch in batches:
                batch = batch.to(device)
                b, length = batch.tokens.shape
                c = batch.chunk_rows.shape[1]
                if length - 1 != c * m:
                    raise ValueError(
                        f"a batch of {length - 1} input tokens does not hold its {c} chunks "
                        f"of {m} tokens"
                    )
                with_neighbours.add(batch.retrieved is not None)
                if len(with_neighbours) > 1:
                    raise ValueError("some batches carry neighbours and others do not")

                real = (batch.chunk_rows >= 0).cpu().numpy()  # (b, c)
                losses = token_losses(
                    model, batch.tokens, batch.retrieved, pad_id=pad_id, autocast=autocast
                )
                on.append(_per_chunk(losses, c)[real])
                if retrieval_off and batch.retrieved is not None:
                    losses_off = token_losses(
                        model, batch.tokens, None, pad_id=pad_id, autocast=autocast
                    )
                    off.append(_per_chunk(losses_off, c)[real])
                counted_tokens = (batch.tokens[:, 1:] != pad_id).reshape(b, c, m).sum(-1)
                counted.append(counted_tokens.cpu().numpy()[real])
                rows.append(batch.chunk_rows.cpu().numpy()[real])
                sizes.append(batch.chunk_bytes.cpu().numpy()[real])
                if batch.retrieved is not None:
                    chunks = batch.tokens[:, :-1].reshape(b, c, m).cpu().numpy()[real]
                    overlaps.append(
                        overlap_ratios(chunks, conditioning(batch, pad_id)[real], pad_id)
                    )
    finally:
        model.train(was_training)

    chunk_tokens = _join(counted, np.int64)
    chunk_bytes = _join(sizes, np.int64)
    tokens, total_bytes = int(chunk_tokens.sum()), int(chunk_bytes.sum())
    if tokens == 0:
        raise ConfigError(
            "the validation set has no token to predict: raise [retrieval] "
            "validation_fraction (or [eval] sequences) so that documents are held out"
        )
    retrieval = with_neighbours == {True}
    chunk_loss = _join(on, np.float64)
    chunk_loss_off = None
    if retrieval_off:
        chunk_loss_off = _join(off, np.float64) if retrieval else chunk_loss
    return EvalResult(
        loss=float(chunk_loss.sum()) / tokens,
        bpb=bits_per_byte(float(chunk_loss.sum()), total_bytes),
        loss_off=None if chunk_loss_off is None else float(chunk_loss_off.sum()) / tokens,
        bpb_off=None
        if chunk_loss_off is None
        else bits_per_byte(float(chunk_loss_off.sum()), total_bytes),
        tokens=tokens,
        bytes=total_bytes,
        retrieval=retrieval,
        chunk_rows=_join(rows, np.int64),
        chunk_loss=chunk_loss,
        chunk_loss_off=chunk_loss_off,
        chunk_tokens=chunk_tokens,
        chunk_bytes=chunk_bytes,
        chunk_overlap=_join(overlaps, np.float64) if retrieval else None,
    )


def _per_chunk(losses: Tensor, chunks: int) -> np.ndarray:
    """``(b, n)`` token losses -> ``(b, c)`` float64 sums over each chunk's positions."""
    b = losses.shape[0]
    return losses.double().reshape(b, chunks, -1).sum(-1).cpu().numpy()


def _join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype=dtype)


def conditioning(batch: Batch, pad_id: int) -> np.ndarray:
    """``(b, c, k, 2m)``: for each chunk, the neighbours retrieved with the chunk before it
    (all padding for a sequence's first chunk), which its predictions depend on."""
    retrieved = batch.retrieved.cpu().numpy()
    none = np.full_like(retrieved[:, :1], pad_id)
    return np.concatenate([none, retrieved[:, :-1]], axis=1)
