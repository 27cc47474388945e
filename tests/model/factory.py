"""Small models and inputs shared by the model tests."""

from __future__ import annotations

import torch

from retro_platform import RETRO

ENCODINGS = ["rotary", "learned-absolute", "alibi", "t5-relative-bias", "nope"]


def small_retro(**overrides) -> RETRO:
    """A RETRO small enough for exhaustive checks: chunks of 8, neighbours of 16."""
    config = dict(
        num_tokens=50,
        max_seq_len=64,
        enc_dim=24,
        enc_depth=2,
        dec_depth=3,
        dec_cross_attn_layers=(1, 3),
        heads=2,
        dec_dim=32,
        dim_head=12,
        chunk_size=8,
    )
    config.update(overrides)
    model = RETRO(**config)
    # T5's bias table starts at zero (as in T5); randomise it so a wrong bias shows
    for name, parameter in model.positions.named_parameters():
        if name.endswith("table.weight"):
            torch.nn.init.normal_(parameter)
    return model.eval()


def random_tokens(*shape: int, num_tokens: int = 50, generator=None) -> torch.Tensor:
    # id 0 is padding, so real tokens are 1..num_tokens-1
    return torch.randint(1, num_tokens, shape, generator=generator)
