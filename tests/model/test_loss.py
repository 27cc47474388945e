"""The fused projection + cross-entropy equals the plain computation, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retro_platform.model.loss import linear_cross_entropy


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 1000])
@pytest.mark.parametrize("ignore_index", [0, -100])
def test_fused_loss_matches_cross_entropy_of_full_logits(chunk_tokens, ignore_index):
    x = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(30, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 30, (50,))
    labels[::4] = 0
    if ignore_index == -100:
        labels[::5] = -100

    fused = linear_cross_entropy(x, weight, bias, labels, ignore_index=ignore_index,
                                 chunk_tokens=chunk_tokens)  # fmt: skip
    (2.5 * fused).backward()
    fused_grads = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None

    plain = F.cross_entropy(F.linear(x, weight, bias), labels, ignore_index=ignore_index)
    (2.5 * plain).backward()
    assert torch.allclose(fused.double(), plain, atol=1e-6)
    for got, t in zip(fused_grads, (x, weight, bias), strict=True):
        assert torch.allclose(got, t.grad, atol=1e-6)


def test_without_grad_it_gives_the_same_value():
    x, weight = torch.randn(20, 8), torch.randn(11, 8)
    labels = torch.randint(0, 11, (20,))
    with torch.no_grad():
        value = linear_cross_entropy(x, weight, None, labels, chunk_tokens=6)
    assert torch.allclose(value, F.cross_entropy(x @ weight.T, labels), atol=1e-5)


def test_all_labels_ignored_gives_zero_not_nan():
    x = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy(x, torch.randn(5, 8), None, torch.zeros(4, dtype=torch.long),
                                ignore_index=0)  # fmt: skip
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
