"""ALiBi (Press et al. 2022): a per-head linear penalty on the distance between positions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PositionalEncoding
from retro_platform.protocols.positional_encoding import relative_positions


def alibi_slopes(heads: int) -> Tensor:
    """The geometric slopes of the paper; for a head count that is not a power of two, the
    closest power's slopes plus every other slope of the next power (as the authors do)."""
    closest = 2 ** math.floor(math.log2(heads))

    def ladder(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    slopes = ladder(closest)
    if closest < heads:
        slopes += ladder(2 * closest)[0::2][: heads - closest]
    return torch.tensor(slopes)


class ALiBiEncoding(PositionalEncoding):
    """Bias ``-slope_h * |q_pos - k_pos|``: for causal attention that is the paper's form; for the
    bidirectional encoder and the cross-attentions the symmetric form is used."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("slopes", alibi_slopes(self.heads), persistent=False)

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        distance = relative_positions(q_positions, k_positions).abs().to(self.slopes.dtype)
        return -self.slopes[:, None, None] * distance


@hookimpl
def register_positional_encodings(register):
    register("alibi", ALiBiEncoding)
