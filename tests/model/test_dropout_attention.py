"""The blockwise CPU attention with dropout computes exactly causal attention with dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retro_platform.model import dropout_attention
from retro_platform.model.dropout_attention import (
    _CausalDropoutAttention,
    _keep_mask,
    causal_attention_with_dropout,
)


def explicit_attention(q, k, v, p, seed):
    """The textbook computation, with the kernel's own dropout masks laid out in full."""
    n, block = q.shape[-2], dropout_attention._BLOCK
    keep = torch.zeros(*q.shape[:-1], n, dtype=q.dtype)
    for index, start in enumerate(range(0, n, block)):
        end = min(start + block, n)
        shape = (*q.shape[:-2], end - start, end)
        keep[..., start:end, :end] = _keep_mask(seed + index, shape, 1 - p, q.device).to(q.dtype)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    weights = scores.masked_fill(future, float("-inf")).softmax(-1)
    return (weights * keep / (1 - p)) @ v


@pytest.mark.parametrize("n", [1, 37, 256, 600])
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_matches_explicit_attention_with_the_same_masks_in_value_and_gradient(n, p):
    torch.manual_seed(n)
    q, k, v = (torch.randn(2, 3, n, 16, dtype=torch.float64, requires_grad=True) for _ in "qkv")
    grad = torch.randn(2, 3, n, 16, dtype=torch.float64)
    ours = _CausalDropoutAttention.apply(q, k, v, p, 1234)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    expected = explicit_attention(q, k, v, p, 1234)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    assert torch.allclose(ours, expected, atol=1e-10)
    for a, b in zip(ours_grads, expected_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_without_dropout_it_equals_the_fused_kernel():
    q, k, v = (torch.randn(1, 2, 300, 32) for _ in "qkv")
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(causal_attention_with_dropout(q, k, v, 0.0), expected, atol=1e-5)


def test_it_drops_about_p_of_the_weights_and_is_repeatable_under_manual_seed():
    q = torch.zeros(1, 1, 512, 8)  # uniform weights: the output reveals the kept fraction
    v = torch.ones(1, 1, 512, 8)
    torch.manual_seed(0)
    a = causal_attention_with_dropout(q, q, v, 0.25)
    torch.manual_seed(0)
    b = causal_attention_with_dropout(q, q, v, 0.25)
    assert torch.equal(a, b)
    # each row averages kept/(1-p) over its keys: the mean over long rows is close to 1
    assert abs(a[0, 0, 256:, 0].mean().item() - 1.0) < 0.02


def test_the_model_uses_it_on_cpu_in_training_and_stays_causal():
    from tests.model.factory import random_tokens, small_retro

    model = small_retro(dec_attn_dropout=0.3).train()
    seq = random_tokens(1, 40)
    changed = seq.clone()
    changed[:, 20] = changed[:, 20] % 49 + 1
    torch.manual_seed(5)
    a = model(seq, random_tokens(1, 5, 2, 16))
    torch.manual_seed(5)
    b = model(changed, random_tokens(1, 5, 2, 16))
    assert torch.equal(a[:, :20], b[:, :20])


@pytest.mark.parametrize("keep_prob", [0.0, 0.5, 0.75, 1.0])
def test_keep_masks_have_the_asked_for_density_and_any_shape(keep_prob):
    mask = _keep_mask(7, (3, 333, 517), keep_prob, "cpu")  # not a multiple of 4 elements
    assert mask.shape == (3, 333, 517) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - keep_prob) < 0.005
    assert torch.equal(mask, _keep_mask(7, (3, 333, 517), keep_prob, "cpu"))
