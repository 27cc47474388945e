"""The seed README's usage snippet, unchanged but for its import line."""

from __future__ import annotations

import pytest

SEED_SNIPPET = """
import torch
from retro_platform import RETRO

retro = RETRO(
    num_tokens = 20000,                      # number of tokens
    max_seq_len = 2048,                      # max sequence length
    enc_dim = 896,                           # encoder model dim
    enc_depth = 2,                           # encoder depth
    dec_depth = 12,                          # decoder depth
    dec_cross_attn_layers = (1, 3, 6, 9),    # decoder cross attention layers (with causal chunk cross attention)
    heads = 8,                               # attention heads
    dec_dim = 796,                           # decoder model dim
    dim_head = 64,                           # dimension per head
    dec_attn_dropout = 0.25,                 # decoder attention dropout
    dec_ff_dropout = 0.25                    # decoder feedforward dropout
)

seq = torch.randint(0, 20000, (2, 2048 + 1))      # plus one since it is split into input and labels for training
retrieved = torch.randint(0, 20000, (2, 32, 2, 128)) # retrieved tokens - (batch, num chunks, num retrieved neighbors, retrieved chunk with continuation)

loss = retro(seq, retrieved, return_loss = True)
loss.backward()
"""


def test_the_seed_snippet_at_reduced_size_runs_unchanged_but_for_sizes():
    scaled = (
        SEED_SNIPPET.replace("2048", "256")
        .replace("(2, 32, 2, 128)", "(2, 4, 2, 128)")
        .replace("896", "64")
        .replace("796", "64")
        .replace("dec_depth = 12", "dec_depth = 9")
    )
    scope: dict = {}
    exec(compile(scaled, "<seed snippet, small>", "exec"), scope)
    loss = scope["loss"]
    assert loss.ndim == 0 and 8.0 < loss.item() < 12.0  # about ln(20000) at initialisation
    assert scope["retro"].token_emb.weight.grad is not None


@pytest.mark.slow
@pytest.mark.e2e  # about a minute at full size: run by CI after the default suite
def test_the_seed_snippet_runs_unchanged_at_full_size():
    scope: dict = {}
    exec(compile(SEED_SNIPPET, "<seed snippet>", "exec"), scope)
    assert 8.0 < scope["loss"].item() < 12.0
    assert all(p.grad is not None for p in scope["retro"].parameters())
