"""The positional-encoding protocol: how position information enters a RETRO attention.

Encodings differ in *where* they act, so the protocol has three optional points, each an
identity by default:

* :meth:`PositionalEncoding.embed` adds absolute information to token embeddings
  (learned absolute, sinusoidal);
* :meth:`PositionalEncoding.rotate` rotates queries and keys by their positions (rotary);
* :meth:`PositionalEncoding.bias` returns an additive attention bias (ALiBi, T5 buckets).

The model builds one instance per :data:`AttentionRole` and passes the positions each attention
uses. Positions are what makes RETRO's chunked cross-attention causal *and* correctly aligned:
for CCA, a query at offset ``i`` of its window gets position ``i + m - 1`` and neighbour token
``i'`` gets position ``i'``, so every relative encoding sees the paper's distance
``i - i' + m - 1``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

#: ``decoder``: causal self-attention over the sequence (and the decoder's input embeddings);
#: ``encoder``: bidirectional self-attention over one neighbour (and the neighbour embeddings);
#: ``encoder_cross``: neighbour tokens attending to the decoder states of the retrieving chunk;
#: ``chunked_cross``: decoder windows attending to their encoded neighbours (CCA).
AttentionRole = Literal["decoder", "encoder", "encoder_cross", "chunked_cross"]


class PositionalEncoding(nn.Module):
    """Base class of positional encodings: the identity at every point.

    Subclasses are registered with the ``register_positional_encodings`` hook and built by the
    model with these keyword arguments (plus the user's own options, which the subclass
    declares as keyword arguments of its own and so validates):

    Args:
        role: which attention this instance serves, see :data:`AttentionRole`.
        dim: the model width of the stream whose embeddings :meth:`embed` receives.
        heads: number of attention heads.
        dim_head: width of one head.
        max_positions: an upper bound on the positions this role will see.
        causal: whether the attention is causal (only ``decoder`` is).
    """

    def __init__(
        self,
        *,
        role: AttentionRole,
        dim: int,
        heads: int,
        dim_head: int,
        max_positions: int,
        causal: bool,
    ) -> None:
        super().__init__()
        self.role = role
        self.dim = dim
        self.heads = heads
        self.dim_head = dim_head
        self.max_positions = max_positions
        self.causal = causal

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """Token embeddings ``(..., n, dim)`` at integer ``positions`` ``(n,)`` -> same shape."""
        return x

    def rotate(
        self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Queries ``(..., heads, i, dim_head)`` and keys ``(..., heads, j, dim_head)``.

        Each is turned by its own positions alone (a query's result must not depend on the
        keys, nor a key's on the queries): incremental decoding turns cached keys once and
        new queries at every step, passing an empty tensor for the other side.
        """
        return q, k

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor | None:
        """An additive attention bias ``(heads, i, j)``, or ``None`` for no bias.

        Return ``None`` when there is nothing to add: the model then keeps the fused causal
        kernel of ``scaled_dot_product_attention``.
        """
        return None


def relative_positions(q_positions: Tensor, k_positions: Tensor) -> Tensor:
    """``(i, j)`` matrix of ``q_pos - k_pos``: the distance every relative encoding uses."""
    return q_positions[:, None] - k_positions[None, :]


__all__ = ["AttentionRole", "PositionalEncoding", "relative_positions"]
