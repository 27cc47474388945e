"""T5-style relative position bias (Raffel et al. 2020): a learned scalar per head for each
bucket of relative distance; buckets are exact for short distances and logarithmic beyond."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PositionalEncoding
from retro_platform.protocols.positional_encoding import relative_positions


def relative_buckets(
    distance: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Bucket index of each ``q_pos - k_pos`` distance.

    Causal attention only sees ``distance >= 0`` and spends every bucket on it; bidirectional
    attention gives half the buckets to each sign.
    """
    buckets = torch.zeros_like(distance)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (distance < 0).long() * num_buckets
        distance = distance.abs()
    else:
        distance = distance.clamp(min=0)
    exact = num_buckets // 2
    # log-spaced buckets from `exact` up to `max_distance`, the rest share the last bucket
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (num_buckets - exact)).long()
    far = far.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class T5RelativeBiasEncoding(PositionalEncoding):
    """Learned relative bias, shared by every layer of one attention role (as T5 shares it).

    Args:
        num_buckets: number of distance buckets (half per direction when bidirectional).
        max_distance: distances from here on share the last bucket.
    """

    def __init__(self, *, num_buckets: int = 32, max_distance: int = 128, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_buckets < 4 or max_distance <= num_buckets // 2:
            raise ValueError(
                "t5-relative-bias needs num_buckets >= 4 and max_distance > num_buckets / 2, "
                f"got num_buckets={num_buckets}, max_distance={max_distance}"
            )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.table = nn.Embedding(num_buckets, self.heads)
        nn.init.zeros_(self.table.weight)

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        buckets = relative_buckets(
            relative_positions(q_positions, k_positions),
            bidirectional=not self.causal,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return self.table(buckets).permute(2, 0, 1)  # (heads, i, j)


@hookimpl
def register_positional_encodings(register):
    register("t5-relative-bias", T5RelativeBiasEncoding)
