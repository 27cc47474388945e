"""The plugin against the paper's formula, and against the positional-encoding contract of
retro-platform's conformance kit (which also checks that its entry point registers it)."""

from __future__ import annotations

import math

import pytest
import torch
from retro_platform_sinusoidal import SinusoidalEncoding

from retro_platform.testing import PositionalEncodingContract

KWARGS = dict(role="decoder", heads=2, dim_head=4, max_positions=16, causal=True)


@pytest.mark.parametrize("dim", [6, 7])
def test_matches_vaswani_formula(dim: int) -> None:
    pe = SinusoidalEncoding(dim=dim, **KWARGS)
    positions = torch.tensor([0, 3, 100])
    x = torch.zeros(2, 3, dim)
    out = pe.embed(x, positions)
    assert out.shape == x.shape
    for row, pos in enumerate(positions.tolist()):
        for j in range(dim):
            angle = pos / 10000 ** ((j - j % 2) / dim)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert out[1, row, j].item() == pytest.approx(expected, abs=1e-4)


def test_adds_to_embeddings_and_leaves_attention_alone() -> None:
    pe = SinusoidalEncoding(dim=8, **KWARGS)
    x = torch.randn(1, 5, 8)
    positions = torch.arange(5)
    assert torch.allclose(pe.embed(x, positions) - x, pe.table(positions), atol=1e-6)
    q, k = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    assert pe.rotate(q, k, positions, positions) == (q, k)
    assert pe.bias(positions, positions) is None
    assert pe.state_dict() == {}


class TestSinusoidalContract(PositionalEncodingContract):
    factory = SinusoidalEncoding
    registered_as = "sinusoidal"
    kwargs = {"base": 100.0}
    dim = 7  # odd: the last cosine is dropped
