"""The memory-lean feed-forward equals the plain composition of its layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retro_platform.model.feed_forward import FeedForward


def plain(ff: FeedForward, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    hidden = F.gelu(ff.proj_in(x))
    if keep is not None:
        hidden = hidden * keep / (1 - ff.dropout)
    return ff.proj_out(hidden)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_output_and_gradients_match_the_plain_layers(dropout):
    ff = FeedForward(6, mult=4, dropout=dropout).double().train()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    out = ff(x)
    torch.manual_seed(3)  # the same draw of the mask as inside forward
    keep = torch.rand(2, 5, 24, dtype=torch.float64) >= dropout if dropout else None
    expected = plain(ff, x, keep)
    assert torch.allclose(out, expected, atol=1e-12)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, *ff.parameters()], grad)
    theirs = torch.autograd.grad(expected, [x, *ff.parameters()], grad)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_eval_and_no_grad_paths_agree():
    ff = FeedForward(8, dropout=0.5).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        a = ff(x)
    assert torch.allclose(a, ff(x), atol=1e-6)
    assert torch.allclose(a, plain(ff, x, None), atol=1e-6)


def test_bf16_autocast_gives_the_fp32_gradients_within_bf16_precision():
    torch.manual_seed(0)
    layer = FeedForward(32)
    x = torch.randn(4, 8, 32, requires_grad=True)
    layer(x).square().sum().backward()
    expected = [p.grad.clone() for p in (x, *layer.parameters())]
    x.grad = None
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    for grad, want in zip((x.grad, *(p.grad for p in layer.parameters())), expected, strict=True):
        assert grad.dtype == torch.float32  # parameters keep fp32 gradients
        assert torch.allclose(grad, want, rtol=0.05, atol=0.05 * want.abs().max().item())
