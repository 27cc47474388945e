"""Rotary position embedding (RoPE, Su et al. 2021): the seed's and the default encoding.

Queries and keys are rotated by angles proportional to their positions, so their dot product
depends only on the relative distance ``q_pos - k_pos``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PositionalEncoding


class RotaryEncoding(PositionalEncoding):
    """Rotary embeddings over the first ``rotary_dim`` features of each head.

    Args:
        rotary_dim: how many features of each head rotate (even); ``None`` rotates them all.
        theta: the base of the geometric frequency ladder.
    """

    def __init__(self, *, rotary_dim: int | None = None, theta: float = 10000.0, **kwargs) -> None:
        super().__init__(**kwargs)
        rotary_dim = self.dim_head if rotary_dim is None else rotary_dim
        if rotary_dim % 2 or not 0 < rotary_dim <= self.dim_head:
            raise ValueError(
                f"rotary_dim must be even and in 2..{self.dim_head} (dim_head), got {rotary_dim}"
            )
        if theta <= 0:
            raise ValueError(f"theta must be positive, got {theta}")
        self.rotary_dim = rotary_dim
        inv_freq = theta ** -(torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def _phases(self, positions: Tensor) -> Tensor:
        # unit complex numbers (n, rotary_dim / 2), in fp32 so long sequences keep precision;
        # looked up in a table of every position up to max_positions (one op instead of five:
        # it matters when decoding a token at a time), computed the same way, so bit-identical
        table = self._table()
        if table is not None and positions.numel() and int(positions.max()) < len(table):
            return table[positions]
        return self._compute_phases(positions)

    def _compute_phases(self, positions: Tensor) -> Tensor:
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]
        return torch.polar(torch.ones_like(angles), angles)

    def _table(self) -> Tensor | None:
        # kept out of the state dict and of .to(): built per device and dtype on first use
        if self.inv_freq.is_meta:
            return None
        key = (self.inv_freq.device, self.inv_freq.dtype)
        tables = self.__dict__.setdefault("_tables", {})
        if key not in tables:
            everywhere = torch.arange(self.max_positions, device=self.inv_freq.device)
            tables[key] = self._compute_phases(everywhere)
        return tables[key]

    def _rotate(self, x: Tensor, phases: Tensor) -> Tensor:
        # x is (..., heads, n, dim_head). Consecutive feature pairs are complex numbers, turned by
        # one complex multiply on a (..., n, heads, dim_head)-contiguous copy: several times
        # faster than the half-split form with cat, and attention then returns its output in
        # that order, so merging the heads afterwards is a free view, not another copy.
        tokens_first = x[..., : self.rotary_dim].transpose(-2, -3).float().contiguous()
        pairs = torch.view_as_complex(tokens_first.unflatten(-1, (-1, 2)))
        rotated = torch.view_as_real(pairs * phases[:, None]).flatten(-2).to(x.dtype)
        rotated = rotated.transpose(-2, -3)
        if self.rotary_dim == x.shape[-1]:
            return rotated
        return torch.cat((rotated, x[..., self.rotary_dim :]), dim=-1)

    def rotate(
        self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        # an empty side (incremental decoding turns cached keys once) costs nothing
        if q.shape[-2] == 0:
            return q, self._rotate(k, self._phases(k_positions))
        if k.shape[-2] == 0:
            return self._rotate(q, self._phases(q_positions)), k
        q_phases = self._phases(q_positions)
        k_phases = q_phases if k_positions is q_positions else self._phases(k_positions)
        return self._rotate(q, q_phases), self._rotate(k, k_phases)


@hookimpl
def register_positional_encodings(register):
    register("rotary", RotaryEncoding)
