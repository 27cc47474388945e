"""Next-token cross-entropy fused with the output projection.

With a 30k vocabulary and 8k tokens, logits alone take 1 GB in fp32 and autograd keeps them and
their softmax. Here the logits exist one slice of tokens at a time: the forward pass computes
each slice's loss *and* its gradients (softmax minus one-hot is all the backward pass needs), so
nothing vocabulary-sized is kept and no matmul is done twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _slices(total: int, size: int):
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, labels, ignore_index, chunk_tokens):
        valid = labels != ignore_index
        count = valid.sum().clamp(min=1)
        safe_labels = torch.where(valid, labels, 0)
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        grad_x = torch.empty_like(x) if want_x else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if want_b else None

        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for part in _slices(x.shape[0], chunk_tokens):
            logits = F.linear(x[part], weight, bias).float()  # (tokens, vocab)
            log_probs = torch.log_softmax(logits, dim=-1)
            del logits
            keep = valid[part].float()
            total -= (log_probs.gather(1, safe_labels[part, None]).squeeze(1) * keep).sum()
            # d loss / d logits = (softmax - one_hot) * keep / count, built in place
            grad = log_probs.exp_()
            grad.scatter_add_(1, safe_labels[part, None], -torch.ones_like(keep)[:, None])
            grad.mul_((keep / count)[:, None])
            if want_x:
                grad_x[part] = (grad.to(weight.dtype) @ weight).to(x.dtype)
            if want_w:
                grad_w.addmm_(grad.t(), x[part].float())
            if want_b:
                grad_b += grad.sum(0)

        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        scale = lambda g, dtype=None: None if g is None else (g * grad_output).to(dtype or g.dtype)  # noqa: E731
        return scale(grad_x), scale(grad_w, w_dtype), scale(grad_b, b_dtype), None, None, None


def linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    chunk_tokens: int = 2048,
) -> Tensor:
    """Mean cross-entropy of ``F.linear(x, weight, bias)`` against ``labels``.

    ``x`` is ``(tokens, dim)``, ``weight`` ``(vocab, dim)``, ``labels`` ``(tokens,)``; labels
    equal to ``ignore_index`` count for nothing. Equal to ``F.cross_entropy`` on the full
    logits, in value and in gradient.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    )
    if needs_grad:
        return _LinearCrossEntropy.apply(x, weight, bias, labels, ignore_index, chunk_tokens)
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    for part in _slices(x.shape[0], chunk_tokens):
        logits = F.linear(x[part], weight, bias).float()
        total += F.cross_entropy(logits, labels[part], ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)
