"""The transformer feed-forward ``W2 · dropout(gelu(W1 · x + b1)) + b2``, lean on memory.

Autograd would keep both the pre-activation and ``gelu`` of it, each four times the model
width, for every token of every layer: the largest activations a layer stores. Here the second
half (GELU, dropout, second projection) is one autograd function that keeps only the
pre-activation and the dropout mask, and recomputes GELU in the backward pass (elementwise
work, a small fraction of the matmuls around it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _dropped(t: Tensor, keep: Tensor | None, scale: float) -> Tensor:
    """``t`` with dropout applied: zero where ``keep`` is False, the rest scaled up."""
    return t if keep is None else t * keep * scale


class _GeluDropoutLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, keep, scale, weight, bias):
        # keep: None, or a boolean dropout mask (a byte per element, not a float)
        activated = _dropped(F.gelu(hidden), keep, scale)
        ctx.save_for_backward(hidden, keep, weight)
        ctx.has_bias, ctx.scale = bias is not None, scale
        return F.linear(activated, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, keep, weight = ctx.saved_tensors
        activated = _dropped(F.gelu(hidden), keep, ctx.scale)  # recomputed: the memory saved
        grad_flat = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight = grad_flat.t() @ activated.reshape(-1, activated.shape[-1])
        grad_bias = grad_flat.sum(0) if ctx.has_bias else None
        grad_activated = _dropped(grad_out @ weight, keep, ctx.scale)
        grad_hidden = torch.ops.aten.gelu_backward(grad_activated, hidden)
        return grad_hidden, None, None, grad_weight, grad_bias


class FeedForward(nn.Module):
    """Position-wise feed-forward with a GELU, ``mult`` times wider inside."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult)
        self.proj_out = nn.Linear(dim * mult, dim)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.proj_in(x)
        keep, scale = None, 1.0
        if self.training and self.dropout > 0:
            keep, scale = torch.rand_like(hidden) >= self.dropout, 1.0 / (1.0 - self.dropout)
        if torch.is_grad_enabled() and (hidden.requires_grad or self.proj_out.weight.requires_grad):
            weight, bias = self.proj_out.weight, self.proj_out.bias
            device = hidden.device.type
            if torch.is_autocast_enabled(device):
                # autocast does not reach inside a custom Function's backward: cast here, so
                # both passes run in the autocast dtype (the casts carry gradients back to fp32)
                dtype = torch.get_autocast_dtype(device)
                hidden, weight = hidden.to(dtype), weight.to(dtype)
                bias = None if bias is None else bias.to(dtype)
            return _GeluDropoutLinear.apply(hidden, keep, scale, weight, bias)
        return self.proj_out(_dropped(F.gelu(hidden), keep, scale))
