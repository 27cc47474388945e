"""The leakage table's overlap is taken against the neighbours that condition a chunk: those
retrieved with the chunk before it, never its own (which reach only the tokens after it)."""

from __future__ import annotations

import torch

from retro_platform import RETRO
from retro_platform.evaluation import evaluate
from retro_platform.training.batch import Batch

M, PAD = 4, 0


def test_a_chunk_overlaps_the_neighbours_of_the_chunk_before_it() -> None:
    tokens = torch.arange(1, 3 * M + 2)[None]  # three chunks and the next token
    chunks = tokens[0, : 3 * M].view(3, M)
    blank = torch.zeros(M, dtype=torch.long)
    retrieved = torch.stack(
        [
            torch.cat([chunks[0], blank]),  # chunk 0 retrieves itself: conditions chunk 1 only
            torch.cat([chunks[2], blank]),  # chunk 1 retrieves chunk 2's text: a full copy
            torch.cat([blank + 99, blank]),  # chunk 2 retrieves nothing shared
        ]
    )[None, :, None]  # (1, 3, 1, 2M)
    batch = Batch(
        tokens=tokens,
        retrieved=retrieved,
        chunk_rows=torch.arange(3)[None],
        neighbour_rows=torch.zeros(1, 3, 1, dtype=torch.long),
        chunk_bytes=torch.full((1, 3), M),
    )
    torch.manual_seed(0)
    model = RETRO(num_tokens=128, max_seq_len=3 * M, enc_dim=16, enc_depth=1, dec_depth=1,
                  dec_cross_attn_layers=(1,), heads=2, dec_dim=16, dim_head=8, chunk_size=M)  # fmt: skip
    result = evaluate(model, [batch], device="cpu")
    # chunk 0: nothing conditions it; chunk 1: chunk 0's neighbour (chunk 0 itself) shares
    # nothing with chunk 1; chunk 2: chunk 1's neighbour is a copy of it
    assert result.chunk_overlap.tolist() == [0.0, 0.0, 1.0]
