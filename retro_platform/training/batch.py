"""One batch of training or validation sequences: what the data loader gives the trainer and
the evaluation.

A sequence is ``n = seq_len`` tokens cut into ``n / m`` chunks of the store (``m`` the chunk
size), plus one more token, the first of what follows, so that every one of the ``n`` positions
has a target. Padding (the tokenizer's ``pad_id``) fills a sequence that a document ends early
and is ignored by the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """``b`` sequences of ``n`` tokens, ``c = n / m`` chunks each, ``k`` neighbours per chunk.

    Attributes:
        tokens: ``(b, n + 1)`` int64; ``tokens[:, :-1]`` is the input, ``tokens[:, 1:]`` the
            targets.
        retrieved: ``(b, c, k, 2m)`` int64 tokens of each chunk's neighbours plus their
            continuations (padding for a missing neighbour), or None when retrieval is off.
        chunk_rows: ``(b, c)`` int64 rows of the chunk table (``-1``: padding, no chunk).
        neighbour_rows: ``(b, c, k)`` int64 rows of the neighbours (``-1``: none), so an
            evaluation can look up which documents were retrieved.
        chunk_bytes: ``(b, c)`` int64 UTF-8 bytes of each chunk's text (0 for padding): bits
            per byte divide the summed token losses of a chunk's positions by these.
    """

    tokens: Tensor
    retrieved: Tensor | None
    chunk_rows: Tensor
    neighbour_rows: Tensor
    chunk_bytes: Tensor

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    def targets(self, pad_id: int) -> int:
        """Target tokens, the ones a loss counts: every token after the first, but padding."""
        return int((self.tokens[:, 1:] != pad_id).sum())

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device`` (non-blocking where the source is pinned)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.tokens),
            move(self.retrieved),
            move(self.chunk_rows),
            move(self.neighbour_rows),
            move(self.chunk_bytes),
        )
