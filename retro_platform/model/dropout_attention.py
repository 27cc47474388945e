"""Causal attention with dropout on the attention weights, for CPUs.

PyTorch's fused CPU attention kernel has no dropout: with ``dropout_p > 0`` it falls back to the
math path, which materialises every ``(heads, n, n)`` score, weight and mask tensor and keeps
them for backward (8.5 GB per layer at n = 8192) and spends most of its time on elementwise work
over the future half of the matrix that the causal mask throws away.

This computes the same function a block of queries at a time: each block attends only to the
keys up to its own end, the forward pass keeps just the output and the softmax normaliser, and
the backward pass recomputes each block's weights and regenerates its dropout mask from a
per-block seed. Memory is linear in n and about half the arithmetic of the math path is skipped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_BLOCK = 256


def _keep_mask(seed: int, shape: tuple[int, ...], keep_prob: float, device) -> Tensor:
    """The same Bernoulli(keep_prob) mask every time it is asked for with the same seed."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=generator, device=device) < keep_prob


def _block_scores(q: Tensor, k: Tensor, start: int, scale: float) -> Tensor:
    """Scores of queries ``start...`` against keys ``0...start + len(q)``, future masked."""
    scores = (q @ k.transpose(-1, -2)) * scale  # (..., block, start + block)
    block = q.shape[-2]
    future = torch.ones(block, block, dtype=torch.bool, device=q.device).triu(1)
    scores[..., start:].masked_fill_(future, float("-inf"))
    return scores


class _CausalDropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, dropout_p, seed):
        n, scale, keep_prob = q.shape[-2], 1.0 / math.sqrt(q.shape[-1]), 1.0 - dropout_p
        out = torch.empty_like(q)
        # the softmax normaliser, at least fp32 even for half-precision inputs
        normaliser = torch.empty(
            q.shape[:-1], dtype=torch.promote_types(q.dtype, torch.float32), device=q.device
        )
        for index, start in enumerate(range(0, n, _BLOCK)):
            end = min(start + _BLOCK, n)
            scores = _block_scores(q[..., start:end, :], k[..., :end, :], start, scale)
            lse = torch.logsumexp(scores, dim=-1, keepdim=True)
            weights = (scores - lse).exp_()
            keep = _keep_mask(seed + index, weights.shape, keep_prob, q.device)
            weights.mul_(keep.to(weights.dtype) / keep_prob)
            out[..., start:end, :] = weights @ v[..., :end, :]
            normaliser[..., start:end] = lse.squeeze(-1)
        ctx.save_for_backward(q, k, v, out, normaliser)
        ctx.dropout_p, ctx.seed = dropout_p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, normaliser = ctx.saved_tensors
        n, scale, keep_prob = q.shape[-2], 1.0 / math.sqrt(q.shape[-1]), 1.0 - ctx.dropout_p
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        grad_out = grad_out.contiguous()
        # sum_j dP_ij P_ij equals grad_out . out, row by row: the softmax backward's correction
        correction = (grad_out * out).sum(-1, keepdim=True)
        for index, start in enumerate(range(0, n, _BLOCK)):
            end = min(start + _BLOCK, n)
            q_block, g_block = q[..., start:end, :], grad_out[..., start:end, :]
            scores = _block_scores(q_block, k[..., :end, :], start, scale)
            weights = (scores - normaliser[..., start:end, None]).exp_().to(q.dtype)
            keep = _keep_mask(ctx.seed + index, weights.shape, keep_prob, q.device)
            keep = keep.to(weights.dtype) / keep_prob
            grad_v[..., :end, :] += (weights * keep).transpose(-1, -2) @ g_block
            grad_weights = (g_block @ v[..., :end, :].transpose(-1, -2)) * keep
            grad_scores = weights * (grad_weights - correction[..., start:end, :]) * scale
            grad_q[..., start:end, :] = grad_scores @ k[..., :end, :]
            grad_k[..., :end, :] += grad_scores.transpose(-1, -2) @ q_block
        return grad_q, grad_k, grad_v, None, None


def causal_attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> Tensor:
    """``scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)`` in memory
    linear in the sequence length. ``q``, ``k``, ``v``: ``(batch, heads, n, dim_head)``.

    The dropout masks come from the global torch generator (one draw per call), so
    ``torch.manual_seed`` makes a run repeatable.
    """
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return _CausalDropoutAttention.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), dropout_p, seed
    )
