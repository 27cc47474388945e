"""Causal attention with dropout on the attention weights, for CPUs.

PyTorch's fused CPU attention kernel has no dropout: with ``dropout_p > 0`` it falls back to the
math path, which materialises every ``(heads, n, n)`` score, weight and mask tensor and keeps
them for backward (8.5 GB per layer at n = 8192) and spends most of its time on elementwise work
over the future half of the matrix that the causal mask throws away.

This computes the same function a block of queries at a time: each block attends only to the
keys up to its own end, the forward pass keeps just the inputs and the output, and the
backward pass recomputes each block's softmax and regenerates its dropout mask from a per-block
seed. Memory is linear in n and about half the arithmetic of the math path is skipped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_BLOCK = 256


def _keep_mask(seed: int, shape: tuple[int, ...], keep_prob: float, device) -> Tensor:
    """The same Bernoulli(keep_prob) mask every time it is asked for with the same seed.

    Four 16-bit draws are cut from each 64-bit random integer, three times faster than one
    float draw per element; keep_prob is thereby rounded to a multiple of 1/65536.
    """
    if keep_prob >= 1.0:  # the threshold below would not fit in 16 bits
        return torch.ones(shape, dtype=torch.bool, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    count = math.prod(shape)
    words = torch.randint(
        -(2**63),
        2**63 - 1,
        (-(-count // 4),),
        dtype=torch.int64,
        generator=generator,
        device=device,
    )
    threshold = round(keep_prob * 65536) - 32768
    return (words.view(torch.int16)[:count] < threshold).view(shape)


def _blocks(n: int):
    """``(index, start, end)`` of each block of queries; the index seeds its dropout mask."""
    for index, start in enumerate(range(0, n, _BLOCK)):
        yield index, start, min(start + _BLOCK, n)


def _block_weights(q: Tensor, k: Tensor, start: int) -> Tensor:
    """Softmax weights of (pre-scaled) queries ``start...`` over keys ``0...start + len(q)``."""
    scores = q @ k.transpose(-1, -2)  # (..., block, start + block)
    block = q.shape[-2]
    future = torch.ones(block, block, dtype=torch.bool, device=q.device).triu(1)
    scores[..., start:].masked_fill_(future, float("-inf"))
    return torch.softmax(scores, dim=-1)


class _CausalDropoutAttention(torch.autograd.Function):
    # Passes over the (block, keys) matrices are what costs time here, not the matmuls, so
    # the scale goes into q once, 1 / (1 - p) into the (n, dim_head) output and gradient, and
    # the backward pass recomputes the fused softmax instead of keeping a normaliser.

    @staticmethod
    def forward(ctx, q, k, v, dropout_p, seed):
        keep_prob, scale = 1.0 - dropout_p, 1.0 / math.sqrt(q.shape[-1])
        q_scaled = q * scale
        out = torch.empty_like(q)
        for index, start, end in _blocks(q.shape[-2]):
            weights = _block_weights(q_scaled[..., start:end, :], k[..., :end, :], start)
            weights.mul_(_keep_mask(seed + index, weights.shape, keep_prob, q.device))
            out[..., start:end, :] = weights @ v[..., :end, :]
        out.div_(keep_prob)
        ctx.save_for_backward(q_scaled, k, v, out)
        ctx.dropout_p, ctx.seed, ctx.scale = dropout_p, seed, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_scaled, k, v, out = ctx.saved_tensors
        keep_prob = 1.0 - ctx.dropout_p
        grad_q, grad_k, grad_v = (
            torch.zeros_like(q_scaled),
            torch.zeros_like(k),
            torch.zeros_like(v),
        )
        # sum_j dP_ij P_ij equals grad_out . out, row by row: the softmax backward's correction
        correction = (grad_out * out).sum(-1, keepdim=True)
        grad_kept = grad_out / keep_prob
        for index, start, end in _blocks(q_scaled.shape[-2]):
            q_block, g_block = q_scaled[..., start:end, :], grad_kept[..., start:end, :]
            weights = _block_weights(q_block, k[..., :end, :], start)
            keep = _keep_mask(ctx.seed + index, weights.shape, keep_prob, q_scaled.device)
            grad_v[..., :end, :] += (weights * keep).transpose(-1, -2) @ g_block
            grad_scores = (g_block @ v[..., :end, :].transpose(-1, -2)).mul_(keep)
            grad_scores.sub_(correction[..., start:end, :]).mul_(weights)
            grad_q[..., start:end, :] = grad_scores @ k[..., :end, :]
            grad_k[..., :end, :] += grad_scores.transpose(-1, -2) @ q_block
        return grad_q.mul_(ctx.scale), grad_k, grad_v, None, None


def causal_attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> Tensor:
    """``scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)`` in memory
    linear in the sequence length. ``q``, ``k``, ``v``: ``(batch, heads, n, dim_head)``.

    The dropout masks come from the global torch generator (one draw per call), so
    ``torch.manual_seed`` makes a run repeatable.
    """
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return _CausalDropoutAttention.apply(q, k, v, dropout_p, seed)
